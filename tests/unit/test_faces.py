"""Face detection on real photographs (scikit-image's samples, LFW faces) and synthetic edge cases.

The astronaut's face box below was drawn by hand from the photograph (Eileen Collins,
``skimage.data.astronaut``, 512x512): chin to hairline, ear to ear.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from classifiers.faces import FaceBox, FaceFinder, FacesOfFirstFrame, HaarFaceDetector, face_crop, load_detector
from classifiers.preprocess import ImageSpec, decode_frames

data = pytest.importorskip("skimage.data")

ASTRONAUT_FACE = (176, 62, 94, 110)  # x, y, w, h
NO_FACES = ("coffee", "chelsea", "rocket", "cat", "horse", "coins", "immunohistochemistry", "brick", "grass",
            "gravel", "logo", "colorwheel", "clock", "page", "text", "moon", "binary_blobs", "cell", "retina",
            "hubble_deep_field")
DETECTORS = ["haar", pytest.param("yunet", marks=pytest.mark.skipif(
    not __import__("importlib.util").util.find_spec("yuface"), reason="yuface is not installed (Python <= 3.11 only)"))]


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def rgb(name: str) -> Image.Image:
    array = getattr(data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        array = (255 * (array - array.min()) / max(1e-9, np.ptp(array))).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]))


@pytest.fixture(scope="module", params=DETECTORS)
def finder(request) -> FaceFinder:
    return FaceFinder(load_detector(request.param), min_face_px=24)


def test_the_astronaut_has_one_face_where_it_is(finder):
    faces = finder.find(rgb("astronaut"))
    assert len(faces) == 1, faces
    assert iou(faces[0].box, ASTRONAUT_FACE) >= 0.5, faces[0]
    assert 0 < faces[0].confidence <= 1


@pytest.mark.parametrize("name", NO_FACES)
def test_photographs_without_people_have_no_faces(finder, name):
    assert finder.find(rgb(name)) == []


def test_the_cameraman_turned_three_quarters(finder):
    """``camera``: a man looking into a camera, his face turned: YuNet finds it, the frontal
    Haar cascade does not (a documented limit of Haar)."""
    faces = finder.find(rgb("camera"))
    if finder.detector.name == "haar":
        assert faces == []
    else:
        assert len(faces) == 1 and iou(faces[0].box, (192, 110, 64, 84)) >= 0.5, faces


def test_lfw_faces_found_and_lfw_non_faces_not(finder):
    """scikit-image's LFW subset: 100 faces and 100 non-faces, 25x25 grey, shown at 60 px."""
    found = []
    for patch in data.lfw_subset():
        canvas = np.full((120, 120), 128, np.uint8)
        canvas[30:90, 30:90] = np.asarray(Image.fromarray((patch * 255).astype(np.uint8)).resize((60, 60)))
        found.append(len(finder.find(Image.fromarray(canvas).convert("RGB"))) > 0)
    assert sum(found[:100]) >= 95, sum(found[:100])
    assert sum(found[100:]) <= 2, sum(found[100:])


def _jpeg(image: Image.Image, orientation: int = 1) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("orientation, stored", [
    (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180),
    (2, Image.Transpose.FLIP_LEFT_RIGHT), (5, Image.Transpose.TRANSPOSE), (7, Image.Transpose.TRANSVERSE)])
def test_boxes_are_in_upright_pixels_when_exif_turns_the_photo(orientation, stored):
    """A phone stores the pixels turned and an EXIF tag that turns them back: the box is in the
    picture as shown (upright), which is also what a browser draws."""
    photo = rgb("astronaut")
    hook = FacesOfFirstFrame(FaceFinder(HaarFaceDetector(), min_face_px=24), ImageSpec())
    decode_frames(_jpeg(photo.transpose(stored), orientation), ImageSpec(), first_frame=hook)
    hook.cut()
    assert len(hook.faces) == 1
    assert iou(hook.faces[0].box, ASTRONAUT_FACE) >= 0.5, hook.faces
    assert hook.crops[0].shape == (224, 224, 3)


def test_boxes_are_in_original_pixels_when_the_jpeg_was_decoded_small():
    """A 2048x2048 JPEG decoded at 1/4 scale (draft): the box is still in the 2048 pixels."""
    big = rgb("astronaut").resize((2048, 2048), Image.Resampling.BICUBIC)
    hook = FacesOfFirstFrame(FaceFinder(HaarFaceDetector()), ImageSpec())
    decode_frames(_jpeg(big), ImageSpec(), first_frame=hook, draft_at_least=512)
    scaled = tuple(4 * v for v in ASTRONAUT_FACE)
    assert len(hook.faces) == 1 and iou(hook.faces[0].box, scaled) >= 0.5, hook.faces


def test_a_small_face_in_a_reduced_decode_gets_its_crop_from_a_sharper_one():
    """A 4000x3000 JPEG decoded at 1/4 for the detector, for a model with a 336 px input: the
    astronaut's face (~300 px in the original) is ~115 px with its margin there, upscaled
    3x: its crop comes from a sharper decode."""
    from classifiers.preprocess import upright_first_frame

    spec = ImageSpec(size=336)
    canvas = Image.new("RGB", (4000, 3000), (90, 120, 150))
    canvas.paste(rgb("astronaut").resize((1500, 1500), Image.Resampling.BICUBIC), (1200, 1400))
    data_ = _jpeg(canvas)
    hook = FacesOfFirstFrame(FaceFinder(HaarFaceDetector()), spec)
    decode_frames(data_, spec, first_frame=hook, draft_at_least=512)
    assert len(hook.faces) == 1 and hook.frame.width == 1000
    side = hook.detail_side()
    assert side > 750  # the shorter side of a decode sharper than 1/4
    sharper = upright_first_frame(data_, draft_at_least=side)
    assert sharper.width > 1000
    blurry = FacesOfFirstFrame(hook.finder, spec)
    decode_frames(data_, spec, first_frame=blurry, draft_at_least=512)
    blurry.cut()
    hook.cut(sharper)
    # more detail: the sharper crop has more high-frequency energy than the upscaled one
    energy = [float(np.abs(np.diff(c.astype(np.float32), axis=1)).mean()) for c in (blurry.crops[0], hook.crops[0])]
    assert energy[1] > energy[0] * 1.2, energy


def test_no_sharper_decode_when_faces_are_large_enough():
    hook = FacesOfFirstFrame(FaceFinder(HaarFaceDetector()), ImageSpec())
    decode_frames(_jpeg(rgb("astronaut").resize((1024, 1024))), ImageSpec(), first_frame=hook, draft_at_least=512)
    # a ~190 px face decoded at 1/2: its crop (with margin) is ~140 px, upscaled less than 2x
    assert len(hook.faces) == 1 and hook.frame.width == 512 and hook.detail_side() == 0
    hook.cut()
    assert hook.crops[0].shape == (224, 224, 3) and hook.frame is None


def test_haar_is_safe_from_several_threads():
    """One classifier shared by threads gave OpenCV errors and wrong boxes: each thread has its own."""
    from concurrent.futures import ThreadPoolExecutor

    detector = HaarFaceDetector()
    images = [np.asarray(rgb("astronaut").resize((s, s))) for s in (300, 420, 512)]
    expected = [detector.detect(image, 20) for image in images]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda i: detector.detect(images[i % 3], 20), range(90)))
    assert all(g == expected[i % 3] for i, g in enumerate(got))


@pytest.mark.skipif(not __import__("importlib.util").util.find_spec("yuface"), reason="yuface is not installed")
def test_yunet_from_cold_threads_does_not_deadlock():
    """YuNet's first call initialises lazily and two at once deadlocked holding the GIL: the
    detector makes it in its constructor. In a fresh process, 4 threads at once must finish."""
    import subprocess
    import sys

    code = ("import threading, numpy as np\n"
            "from classifiers.faces import YuNetFaceDetector\n"
            "d = YuNetFaceDetector()\n"
            "go = threading.Barrier(4)\n"
            "def run():\n    go.wait()\n    d.detect(np.zeros((200, 200, 3), np.uint8), 10)\n"
            "ts = [threading.Thread(target=run) for _ in range(4)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]; print('ok')\n")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.skipif(not __import__("importlib.util").util.find_spec("yuface"), reason="yuface is not installed")
def test_yunet_in_worker_processes_gives_the_same_faces_and_its_own_confidences():
    here = FaceFinder(load_detector("yunet"), min_face_px=24)
    away = FaceFinder(load_detector("yunet", workers=1), min_face_px=24)
    try:
        assert away.find(rgb("astronaut")) == here.find(rgb("astronaut"))
        # below the service's 0.5 the detector's own candidates show: the setting reaches it
        low = FaceFinder(load_detector("yunet"), min_face_px=24, min_confidence=0.2)
        assert len(low.find(rgb("chelsea"))) > len(here.find(rgb("chelsea"))) == 0
    finally:
        away.detector.close()


def _lfw_faces_found_alone() -> list[np.ndarray]:
    """The LFW faces the detector finds on their own (97 of 100): a crowd test is about many
    faces at once, not about the few it misses alone."""
    finder, found = FaceFinder(HaarFaceDetector(), min_face_px=24), []
    for patch in data.lfw_subset()[:100]:
        canvas = np.full((120, 120), 128, np.uint8)
        canvas[30:90, 30:90] = np.asarray(Image.fromarray((patch * 255).astype(np.uint8)).resize((60, 60)))
        if finder.find(Image.fromarray(canvas).convert("RGB")):
            found.append(patch)
    return found


def _crowd(sizes: list[int], canvas: tuple[int, int] = (1600, 1200)) -> tuple[Image.Image, list[tuple]]:
    """LFW faces pasted on a grey canvas in rows, each ``size`` pixels."""
    faces = _lfw_faces_found_alone()[:len(sizes)]
    image = Image.new("RGB", canvas, (128, 128, 128))
    boxes, x, y, row = [], 20, 20, 0
    for patch, size in zip(faces, sizes):
        if x + size * 1.6 > canvas[0]:
            x, y, row = 20, y + row + 20, 0
        face = Image.fromarray((patch * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        # LFW crops are tight: a margin of background makes them look like faces in a photo.
        framed = Image.new("L", (int(size * 1.6), int(size * 1.6)), 128)
        framed.paste(face, (int(size * 0.3), int(size * 0.3)))
        image.paste(framed.convert("RGB"), (x, y))
        boxes.append((x + int(size * 0.3), y + int(size * 0.3), size, size))
        x += framed.width + 20
        row = max(row, framed.height)
    return image, boxes


def test_many_faces_are_all_found_largest_first():
    sizes = [200, 180, 160, 150, 140, 130, 120, 110, 100, 100, 90, 90]
    image, boxes = _crowd(sizes)
    faces = FaceFinder(HaarFaceDetector(), detect_max_side=1600, min_face_px=24, max_faces=20).find(image)
    assert len(faces) == len(boxes), faces
    for box in boxes:
        assert max(iou(box, f.box) for f in faces) >= 0.4, box
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)


def test_max_faces_keeps_the_largest():
    image, boxes = _crowd([200, 180, 160, 150, 140, 130])
    faces = FaceFinder(HaarFaceDetector(), detect_max_side=1600, min_face_px=24, max_faces=3).find(image)
    assert len(faces) == 3
    for face, box in zip(faces, boxes[:3]):
        assert iou(face.box, box) >= 0.4, (face, box)


def test_tiny_faces_are_found_down_to_the_minimum_and_not_below():
    """Faces of 40 px in a 1600x1200 photo: found when detection runs at full scale and the
    minimum allows them; never reported when below ``min_face_px``; lost when the detection
    copy is so small that they shrink under the detector's window (documented trade-off)."""
    image, boxes = _crowd([40, 40, 40, 40])
    assert len(FaceFinder(HaarFaceDetector(), detect_max_side=1600, min_face_px=24).find(image)) == 4
    assert FaceFinder(HaarFaceDetector(), detect_max_side=1600, min_face_px=64).find(image) == []
    assert FaceFinder(HaarFaceDetector(), detect_max_side=512, min_face_px=24).find(image) == []


def test_a_face_at_the_edge_is_clipped_to_the_image():
    photo = np.asarray(rgb("astronaut"))
    cut = Image.fromarray(np.ascontiguousarray(photo[:, 150:]))  # the face starts ~26 px from the left edge
    faces = FaceFinder(HaarFaceDetector(), min_face_px=24).find(cut)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert x >= 0 and y >= 0 and x + w <= cut.width and y + h <= cut.height


def test_face_crop_is_square_with_margin_and_clipped():
    frame = Image.new("RGB", (400, 300))
    crop = face_crop(frame, FaceBox(100, 100, 50, 50, 1.0), margin=0.25)
    assert crop.size[0] == crop.size[1] and abs(crop.size[0] - 75) <= 1
    edge = face_crop(frame, FaceBox(0, 0, 40, 60, 1.0), margin=0.5)
    assert edge.size[0] <= 400 and edge.size[1] <= 300 and min(edge.size) > 0
    half = face_crop(Image.new("RGB", (200, 150)), FaceBox(100, 100, 50, 50, 1.0), full_size=(400, 300))
    assert half.size[0] == half.size[1] and abs(half.size[0] - 37.5) <= 1.5


def test_auto_is_yunet_where_installed():
    from importlib.util import find_spec

    assert load_detector("auto").name == ("yunet" if find_spec("yuface") else "haar")


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown face detector"):
        load_detector("dlib")
