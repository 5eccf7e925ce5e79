"""Hostile input against the real service: every path an image takes, over loopback only.

Two fetch policies run side by side: the application under test allow-lists 127.0.0.0/8 so it
can reach the local image server; a second ``ImageFetcher`` with the default policy proves the
very same URLs are refused without that allow-list. A canary listener counts connections; every
forbidden URL points at it, and it must see none.
"""

import base64
import io
import time

import httpx
import pytest
from PIL import Image
from ray import serve

from classifiers.errors import ModerationError
from deployments.app import build_app
from deployments.fetcher import ImageFetcher
from deployments.settings import AppArgs, FetchSettings
from images import encode, jpeg, photo_like, png, png_bomb
from integration.cluster import serve_on_loopback
from integration.servers import PHOTO

pytestmark = pytest.mark.integration

MAX_UPLOAD = 2_000_000
FETCH_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def base_url(tiny_clip_dir, servers):
    image_port, canary = servers
    ports = (image_port, canary.port)
    args = AppArgs(
        model=tiny_clip_dir, max_upload_bytes=MAX_UPLOAD, max_image_pixels=20_000_000, max_frames=4,
        fetch=FetchSettings(timeout_s=FETCH_TIMEOUT_S, max_bytes=1_000_000, max_redirects=3,
                            allowed_ports=ports, allowed_networks=("127.0.0.0/8",)),
    )
    with serve_on_loopback() as port:
        serve.run(build_app(args), name="moderation", route_prefix="/")
        serve.run(ImageFetcher.bind(FetchSettings(allowed_ports=ports)), name="strict", route_prefix=None)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def replica_before(http):
    handle = serve.get_deployment_handle("ClipModel", app_name="moderation")
    return handle.health.remote().result()["replica"]


def classify_url(http, url):
    return http.post("/v1/classify", json={"url": url, "classifiers": ["nudity"]})


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["message"] and body["request_id"]


# ---------------------------------------------------------------- URL fetching

def test_allow_listed_loopback_image_is_fetched(http, servers, replica_before):
    image_port, _ = servers
    assert classify_url(http, f"http://127.0.0.1:{image_port}/photo.jpg").status_code == 200


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "017700000001", "localhost",
     "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"],
)
def test_without_the_allow_list_every_loopback_form_is_refused_unconnected(host, servers, base_url):
    image_port, canary = servers
    strict = serve.get_deployment_handle("ImageFetcher", app_name="strict")
    before = canary.connections
    outcome = strict.fetch.remote(f"http://{host}:{canary.port}/x.jpg").result()
    assert isinstance(outcome, ModerationError) and outcome.code == "url_forbidden"
    assert canary.connections == before == 0
    # ... and the very URL the allow-listed application fetches is refused here too.
    same = strict.fetch.remote(f"http://{host}:{image_port}/photo.jpg").result()
    assert isinstance(same, ModerationError) and same.code == "url_forbidden"


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/photo-as-html", 200, None),              # content is sniffed: a JPEG is a JPEG
        ("/html-as-jpeg", 415, "unsupported_media_type"),
        ("/empty", 415, "unsupported_media_type"),
        ("/bomb.png", 413, "image_too_large"),
        ("/endless", 413, "image_too_large"),       # cut off at fetch.max_bytes
        ("/big", 413, "image_too_large"),           # declared Content-Length over the cap
        ("/hop/2", 200, None),                      # within max_redirects
        ("/hop/5", 502, "fetch_failed"),            # beyond max_redirects
        ("/loop", 502, "fetch_failed"),
        ("/nothing-here", 502, "fetch_failed"),
        ("/to-canary-v6", 400, "url_forbidden"),    # redirect hop re-checked: ::1 not allowed
        ("/to-file", 400, "url_forbidden"),
    ],
)
def test_hostile_urls_get_coded_errors(http, servers, path, status, code):
    image_port, canary = servers
    response = classify_url(http, f"http://127.0.0.1:{image_port}{path}")
    if code is None:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, status, code)
    assert canary.connections == 0


def test_stalling_server_times_out_on_time(http, servers):
    image_port, _ = servers
    start = time.monotonic()
    assert_error(classify_url(http, f"http://127.0.0.1:{image_port}/stall"), 504, "fetch_timeout")
    assert time.monotonic() - start < FETCH_TIMEOUT_S + 3


def test_upstream_status_is_reported(http, servers):
    image_port, _ = servers
    response = classify_url(http, f"http://127.0.0.1:{image_port}/nothing-here")
    assert "404" in response.json()["error"]["message"]


# ---------------------------------------------------------------- uploads and base64

def upload(http, data, name="x.bin"):
    return http.post("/v1/classify", files={"file": (name, data, "application/octet-stream")},
                     data={"classifiers": "nudity"})


def cmyk_jpeg() -> bytes:
    return encode(photo_like(120, 90).convert("CMYK"), "JPEG")


def sixteen_bit_png() -> bytes:
    import numpy as np

    return encode(Image.fromarray(np.asarray(photo_like(90, 60).convert("L"), np.uint16) * 257), "PNG")


def many_frame_gif(frames: int = 1500) -> bytes:
    images = [Image.new("P", (64, 64), i % 256) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=10)
    return buf.getvalue()


def rgba_png() -> bytes:
    return encode(photo_like(80, 80).convert("RGBA"), "PNG")


@pytest.mark.parametrize(
    "make, status, code",
    [
        (lambda: png_bomb(30000, 30000), 413, "image_too_large"),
        (lambda: png_bomb(5000, 5000), 413, "image_too_large"),   # over this app's 20 MP
        (lambda: jpeg()[:600], 422, "image_decode_error"),
        (lambda: png()[:200], 422, "image_decode_error"),
        (lambda: b"", 422, "image_decode_error"),
        (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', 415,
         "unsupported_media_type"),
        (lambda: b"<html><script>alert(1)</script></html>", 415, "unsupported_media_type"),
        (lambda: b"%PDF-1.4 not an image", 415, "unsupported_media_type"),
        (cmyk_jpeg, 200, None),
        (sixteen_bit_png, 200, None),
        (rgba_png, 200, None),
        (many_frame_gif, 200, None),
    ],
    ids=["bomb-400MP", "bomb-25MP", "truncated-jpeg", "truncated-png", "zero-bytes", "svg", "html",
         "pdf", "cmyk", "16-bit", "rgba", "gif-1500-frames"],
)
def test_hostile_uploads(http, make, status, code):
    start = time.monotonic()
    response = upload(http, make())
    if code is None:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, status, code)
    assert time.monotonic() - start < 10


def test_oversized_upload_is_refused_from_content_length(http):
    assert_error(upload(http, b"\xff\xd8\xff" + b"\0" * (3 * MAX_UPLOAD)), 413, "image_too_large")


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=XyZ", "application/json"])
def test_chunked_upload_without_length_is_cut_off(http, content_type):
    def body():
        yield b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(160):  # 10 MB, no Content-Length header
            yield b"\0" * 65536

    response = http.post("/v1/classify", content=body(), headers={"content-type": content_type})
    assert_error(response, 413, "image_too_large")  # how early: tests/unit/test_body_limit.py


def test_invalid_and_oversized_base64(http):
    assert_error(http.post("/v1/classify", json={"image_base64": "!!!!"}), 400, "invalid_request")
    huge = base64.b64encode(b"\0" * (MAX_UPLOAD + 10)).decode()
    assert_error(http.post("/v1/classify", json={"image_base64": huge}), 413, "image_too_large")


def test_exif_rotated_pair_scores_alike(http):
    image = photo_like(320, 200, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    upright = encode(image, "JPEG", quality=95)
    a = upload(http, rotated).json()["results"]["nudity"]["scores"]
    b = upload(http, upright).json()["results"]["nudity"]["scores"]
    assert a == pytest.approx(b, abs=0.02)


# ---------------------------------------------------------------- afterwards

def test_service_still_serves_normally_on_the_same_replica(http, replica_before):
    response = upload(http, PHOTO)
    assert response.status_code == 200
    handle = serve.get_deployment_handle("ClipModel", app_name="moderation")
    assert handle.health.remote().result()["replica"] == replica_before
    assert http.get("/healthz").status_code == 200
