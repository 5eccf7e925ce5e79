"""Faces on the real application (Ray Serve, loopback HTTP, the tiny checkpoint): boxes in the
original image's pixels with EXIF orientation applied, per-face attributes from crops that ride
in the same batches as the whole image, and a configured policy over faces and a classifier."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from clients.http import ModerationClient
from deployments.settings import AppArgs, FacesSettings, KnownImagesSettings
from integration.cluster import app_config, deploy_apps, serve_on_loopback

pytestmark = pytest.mark.integration
ASTRONAUT_FACE = (176, 62, 94, 110)  # drawn by hand (tests/unit/test_faces.py)
ATTRIBUTES = {"minor", "smiling", "glasses", "facial_hair"}
POLICIES = [
    # Scores of a random-weight model mean nothing; min_score 0 makes the conditions about
    # what was run and found, which is what this test checks.
    {"name": "face_and_nudity", "action": "block",
     "when": [{"face": "minor", "min_score": 0.0}, {"classifier": "nudity", "min_score": 0.0}]},
    {"name": "crowd", "action": "review", "when": [{"min_faces": 3}]},
]


def iou(a, b) -> float:
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    out, exif = io.BytesIO(), Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def crowd(count: int) -> Image.Image:
    """``count`` copies of the astronaut's face (with some of the photo around it), in a row."""
    face = astronaut().crop((126, 12, 326, 232))  # 200x220 around her face
    image = Image.new("RGB", (220 * count + 20, 260), (128, 128, 128))
    for n in range(count):
        image.paste(face, (20 + 220 * n, 20))
    return image


@pytest.fixture(scope="module")
def port(tiny_clip_dir):
    with serve_on_loopback() as port:
        yield port


@pytest.fixture(scope="module")
def service(tiny_clip_dir, port):
    deploy_apps(port, app_config(service_args(tiny_clip_dir)))
    with ModerationClient(f"http://127.0.0.1:{port}") as client:
        yield client


def service_args(tiny_clip_dir: str) -> AppArgs:
    return AppArgs(model=tiny_clip_dir, torch_threads=1, forward_lanes=1, max_batch_size=16, dtype="float32",
                   engine="torch", faces=FacesSettings(min_face_px=24), policies=POLICIES,
                   known_images=KnownImagesSettings(cache_size=100))


@pytest.mark.parametrize("orientation, stored", [(1, None), (6, Image.Transpose.ROTATE_90),
                                                 (8, Image.Transpose.ROTATE_270)])
def test_the_face_box_is_in_upright_original_pixels(service, orientation, stored):
    """A phone photo stores its pixels turned, with an EXIF tag that turns them back: the box
    is where the face is in the picture as shown."""
    photo = astronaut()
    answer = service.classify(jpeg(photo.transpose(stored) if stored else photo, orientation))
    assert answer.faces is not None and len(answer.faces) == 1, answer.faces
    face = answer.faces[0]
    assert iou(face.box, ASTRONAUT_FACE) >= 0.5, face.box
    assert set(face.attributes) == ATTRIBUTES and all(0 <= s <= 1 for s in face.attributes.values())
    assert 0 < face.confidence <= 1


def test_a_large_photo_gets_boxes_in_its_own_pixels(service):
    """A 2048x2048 JPEG is decoded at reduced scale and detected smaller still: the box is in 2048s."""
    answer = service.classify(jpeg(astronaut().resize((2048, 2048), Image.Resampling.BICUBIC)))
    assert len(answer.faces) == 1
    assert iou(answer.faces[0].box, tuple(4 * v for v in ASTRONAUT_FACE)) >= 0.5, answer.faces[0].box


def test_a_crowd_is_scored_in_one_batch_not_one_pass_a_face(service):
    answer = service.classify(jpeg(crowd(5)), classifiers=["face_attributes"])
    assert len(answer.faces) == 5, answer.faces
    xs = sorted(face.box[0] for face in answer.faces)
    assert all(b - a > 150 for a, b in zip(xs, xs[1:]))  # five different faces
    # The whole image and its five crops went to the model together.
    assert answer.timing.batch_size >= 6, answer.timing
    # nudity was not asked for: the policies ran it anyway (not returned), and both hold
    assert set(answer.results) == {"face_attributes"}
    assert [p.name for p in answer.policies] == ["face_and_nudity", "crowd"]
    assert answer.action == "block" and answer.flagged is True


def test_faces_only_when_face_attributes_is_asked_for_but_policies_always_see_them(service):
    answer = service.classify(jpeg(astronaut()), classifiers=["nudity"])
    assert answer.faces is None and [p.name for p in answer.policies] == ["face_and_nudity"]
    assert service.classify(jpeg(astronaut()), classifiers=["face_attributes"]).faces is not None


def test_the_catalog_says_how_faces_are_found(service):
    from importlib.util import find_spec

    info = service.classifiers().faces
    assert info.detector == ("yunet" if find_spec("yuface") else "haar")
    assert set(info.attributes) == ATTRIBUTES and info.min_face_px == 24


def test_no_faces_is_an_empty_list(service):
    from skimage import data

    assert service.classify(jpeg(Image.fromarray(data.coffee()))).faces == []


def test_a_policy_over_a_face_and_a_classifier(service):
    answer = service.classify(jpeg(astronaut()), classifiers=["nudity", "face_attributes"])
    assert [p.name for p in answer.policies] == ["face_and_nudity"]
    assert answer.action == "block" and answer.flagged is True


def test_a_repeat_from_the_cache_has_the_same_faces(service):
    data = jpeg(crowd(3))
    first = service.classify(data)
    again = service.classify(data)
    assert again.cached and not first.cached
    assert [f.model_dump() for f in again.faces] == [f.model_dump() for f in first.faces]


def test_batch_route_items_carry_faces(service):
    from skimage import data

    items = service.classify_batch([jpeg(astronaut()), jpeg(Image.fromarray(data.coffee())), b"not an image"])
    assert len(items[0].faces) == 1 and items[1].faces == [] and isinstance(items[2], Exception)


def test_boxes_only_skips_the_crops(service, port, tiny_clip_dir):
    """``faces.attributes: false``: boxes for blurring or counting, no forward pass per face
    (the whole image rides alone). Deployed as a second application beside the first, with no
    policies."""
    args = AppArgs(model=tiny_clip_dir, torch_threads=1, forward_lanes=1, dtype="float32", engine="torch",
                   faces=FacesSettings(min_face_px=24, attributes=False), known_images=KnownImagesSettings(cache_size=100))
    # Declarative, as `serve deploy`: the first application stays as it is.
    deploy_apps(port, app_config(service_args(tiny_clip_dir)), app_config(args, name="boxes", route_prefix="/boxes"))
    with ModerationClient(f"http://127.0.0.1:{port}/boxes") as boxes:
        answer = boxes.classify(jpeg(crowd(3)), classifiers=["face_attributes"])
        assert len(answer.faces) == 3 and all(face.attributes == {} for face in answer.faces)
        assert answer.timing.batch_size == 1
        assert boxes.classifiers().faces.attributes == []
        # No policy needs faces here: cached by a request that did not look for them, the
        # next one that does decodes again.
        other = jpeg(crowd(2))
        assert boxes.classify(other, classifiers=["nudity"]).faces is None
        looked = boxes.classify(other, classifiers=["face_attributes"])
        assert not looked.cached and len(looked.faces) == 2
        assert boxes.classify(other, classifiers=["face_attributes"]).cached
    assert service.classify(jpeg(crowd(2)), classifiers=["face_attributes"]).faces[0].attributes
