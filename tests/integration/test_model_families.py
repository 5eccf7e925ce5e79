"""SigLIP and SigLIP 2 checkpoints served by the real application on Ray Serve, over HTTP."""

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from classifiers.registry import BUILTIN_CLASSIFIERS
from classifiers.random_checkpoint import build_random_checkpoint
from deployments.settings import AppArgs, KnownImagesSettings
from images import jpeg
from integration.cluster import app_config, deploy_apps, serve_on_loopback

# These tests look at batches: repeats must not come from the result cache, and the images'
# decodes should end close together (PDQ hashing, a few ms per image, staggers them).
NO_CACHE = KnownImagesSettings(cache_size=0, pdq=False)

pytestmark = pytest.mark.integration

# Aspect ratios that give NaFlex different patch grids, so one batch mixes shapes.
IMAGES = [jpeg(w, h, seed=i) for i, (w, h) in enumerate([(640, 480), (300, 900), (500, 500), (1200, 300)])]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: str(build_random_checkpoint(root / family, family=family))
            for family in ("siglip", "siglip2-naflex")}


@pytest.fixture(scope="module")
def service():
    with serve_on_loopback() as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            yield port, http


def serve_model(service, path: str) -> httpx.Client:
    port, http = service
    args = AppArgs(model=path, max_batch_size=8, torch_threads=2, forward_lanes=2, known_images=NO_CACHE)
    deploy_apps(port, app_config(args))
    return http


def upload(http, data, **form):
    return http.post("/v1/classify", files={"file": ("image.jpg", data, "image/jpeg")}, data=form)


def test_siglip2_naflex_serves_mixed_shapes_in_one_batch_as_alone(service, checkpoints):
    http = serve_model(service, checkpoints["siglip2-naflex"])
    alone = [upload(http, image).json() for image in IMAGES]
    with ThreadPoolExecutor(len(IMAGES)) as pool:
        together = list(pool.map(lambda image: upload(http, image), IMAGES))
    for response, single in zip(together, alone):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_family"] == "siglip2" and body["model"] == checkpoints["siglip2-naflex"]
        for name, result in body["results"].items():
            assert result["scores"] == pytest.approx(single["results"][name]["scores"], abs=1e-4)
    assert max(r.json()["timing"]["batch_size"] for r in together) > 1
    info = http.get("/v1/classifiers").json()["model_info"]
    assert (info["family"], info["architecture"], info["preprocessing"], info["scoring"]) == \
        ("siglip2", "Siglip2Model", "patches", "sigmoid")
    assert info["logit_bias"] == -10.0 and info["logit_scale"] == 10.0 and info["max_patches"] == 64


def test_siglip_scores_attributes_by_sigmoid_and_custom_labels_by_softmax(service, checkpoints):
    http = serve_model(service, checkpoints["siglip"])
    response = http.post("/v1/classify", json={
        "image_base64": base64.b64encode(IMAGES[0]).decode(), "labels": ["a cat", "a dog", "a car"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_family"] == "siglip"
    assert list(body["results"]) == [*BUILTIN_CLASSIFIERS, "custom"]
    assert sum(body["results"]["custom"]["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    faces = body["results"]["face_attributes"]["scores"]
    # Random towers: cosines near 0, so each attribute sits near sigmoid(bias) = sigmoid(-10),
    # where CLIP's label-against-negation rule would put it near 0.5.
    assert all(0 < s < 0.01 for s in faces.values()), faces
    catalog = http.get("/v1/classifiers").json()
    assert catalog["model_info"]["preprocessing"] == "squash"
    assert http.get("/healthz").json()["model_family"] == "siglip"
