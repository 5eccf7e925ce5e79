"""Faces: find them with a real detector, and cut each out for CLIP's per-face attributes.

The detector sits behind ``FaceDetector`` (one method: boxes in the pixels of the image it is
given). ``HaarFaceDetector`` is OpenCV's frontal-face Haar cascade
(``haarcascade_frontalface_alt2``, shipped inside the opencv-python-headless 4.x wheel; Intel's
BSD-style licence): 97 of 100 of scikit-image's LFW faces, none of its 100 non-faces, nothing in
20 sample photographs without people (``_default`` saw faces in coins). ``YuNetFaceDetector``
is libfacedetection's YuNet (``yuface``, BSD-3; wheels only for Python <= 3.11 on x86-64): as
good on LFW, finds a turned face Haar misses, 3.5x faster; ``faces.detector: auto`` (the
default) picks it where it is installed. Measurements: tests/unit/test_faces.py, docs/faces.md.

``FaceFinder`` runs one on a copy scaled to at most ``detect_max_side`` pixels (detection cost
grows with the pixel count and a face smaller than ~4 % of the image is rarely a policy
question), maps the boxes back to the original image's pixels with EXIF orientation applied,
and orders them largest first. ``face_crop`` cuts a square around a face, with a margin, for
the image tower.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

DETECTORS = ("auto", "haar", "yunet")


@dataclass(frozen=True)
class FaceBox:
    """One face: ``x, y, w, h`` in the original image's pixels (EXIF orientation applied) and
    the detector's ``confidence`` in [0, 1]."""

    x: int
    y: int
    w: int
    h: int
    confidence: float

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


class FaceDetector(Protocol):
    """Finds faces in one upright RGB image; boxes ``(x, y, w, h, confidence)`` in its pixels."""

    name: str
    min_window: int  # smallest face (pixels) the detector can see

    def detect(self, rgb: np.ndarray, min_size: int) -> list[tuple[float, float, float, float, float]]: ...


class HaarFaceDetector:
    """OpenCV's ``haarcascade_frontalface_alt2``. Its confidence is ``1 - exp(-n / 10)``, ``n``
    being how many overlapping windows agreed on the face (3 at least): a monotone score, not a
    probability (on LFW faces the median ``n`` is 23, 0.90)."""

    name = "haar"
    min_window = 20  # the cascade's training window

    def __init__(self, scale_factor: float = 1.2, min_neighbours: int = 3) -> None:
        import cv2

        self._cv2 = cv2
        # One thread a call: each decode thread of a replica runs its own detection, and
        # OpenCV's pool on top would oversubscribe the cores (and escape the threads' niceness).
        cv2.setNumThreads(1)
        self.path = cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml"
        self._local = threading.local()
        self._cascade()  # a missing file fails here, at start
        self.scale_factor = scale_factor
        self.min_neighbours = min_neighbours

    def _cascade(self):
        """This thread's classifier: one shared by threads gave wrong boxes and OpenCV errors
        (it keeps each call's image state; measured, 76 errors in 240 calls from 2 threads)."""
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = self._local.cascade = self._cv2.CascadeClassifier(self.path)
            if cascade.empty():
                raise RuntimeError(f"OpenCV's face cascade could not be read from {self.path}")
        return cascade

    def detect(self, rgb: np.ndarray, min_size: int) -> list[tuple[float, float, float, float, float]]:
        grey = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        boxes, neighbours = self._cascade().detectMultiScale2(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbours,
            minSize=(max(min_size, self.min_window),) * 2)
        return [(float(x), float(y), float(w), float(h), 1.0 - math.exp(-int(n) / 10.0))
                for (x, y, w, h), n in zip(boxes, np.ravel(neighbours))]


class YuNetFaceDetector:
    """libfacedetection's YuNet through ``yuface`` (its weights are compiled in): its own
    confidence, 0-1. Its C++ holds the GIL while it runs: the service runs it in worker
    processes (``load_detector``, ``classifiers.detector_process``)."""

    name = "yunet"
    min_window = 10

    def __init__(self, min_confidence: float = 0.0) -> None:
        try:
            import yuface
        except ImportError as exc:
            raise RuntimeError("faces.detector 'yunet' needs the yuface package (Python <= 3.11): "
                               "pip install 'clip-moderation[yunet]'") from exc
        self._detect = yuface.c_detect  # the raw detector: yuface.detect warns above 960 px
        self.min_confidence = min_confidence
        self._omp_set_num_threads = _bundled_openmp(yuface)
        self._single = threading.local()
        # The first call initialises lazily, and two first calls at once deadlock holding the
        # GIL (reproduced): make it now, before any other thread can call.
        self.detect(np.zeros((32, 32, 3), np.uint8), self.min_window)

    def detect(self, rgb: np.ndarray, min_size: int) -> list[tuple[float, float, float, float, float]]:
        if self._omp_set_num_threads is not None and not getattr(self._single, "done", False):
            # One thread per call, as Haar: libfacedetection's OpenMP team (its own libgomp) on
            # each decode thread spun on cores the forward passes need (measured: 36 ms of CPU
            # a detection instead of 27, and half the service's throughput lost).
            self._omp_set_num_threads(1)  # per calling thread, so once per decode thread
            self._single.done = True
        rows = np.asarray(self._detect(np.ascontiguousarray(rgb[..., ::-1])))  # BGR in
        # one row a face: confidence (0-100), x, y, w, h, then landmarks
        return [(float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[0]) / 100.0)
                for r in rows.reshape(-1, rows.shape[-1] if rows.ndim == 2 else 16)
                if min(r[3], r[4]) >= min_size and r[0] / 100.0 >= self.min_confidence]


def _bundled_openmp(module):
    """``omp_set_num_threads`` of the OpenMP runtime a wheel bundles (``<name>.libs/libgomp-*``),
    or None when it bundles none."""
    import ctypes
    from pathlib import Path

    folder = Path(module.__file__).parent.parent / f"{module.__name__}.libs"
    for path in sorted(folder.glob("libgomp*.so*")):
        return ctypes.CDLL(str(path)).omp_set_num_threads
    return None


def in_thread_detector(name: str) -> FaceDetector:
    """The detector itself, called in the caller's thread (``haar`` or ``yunet``)."""
    if name == "haar":
        return HaarFaceDetector()
    if name == "yunet":
        return YuNetFaceDetector()
    raise ValueError(f"unknown face detector {name!r}; known: {', '.join(DETECTORS)}")


def yunet_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("yuface") is not None


def load_detector(name: str, workers: int = 0, nice: int = 0) -> FaceDetector:
    """``haar``, ``yunet``, or ``auto``: YuNet where ``yuface`` is installed, else Haar.

    Haar runs in the calling thread (OpenCV releases the GIL). YuNet holds the GIL, so with
    ``workers`` it runs in that many worker processes (niced by ``nice``); 0: in the caller's
    thread (tests, benchmarks of the detector alone)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; known: {', '.join(DETECTORS)}")
    if name == "auto":
        name = "yunet" if yunet_installed() else "haar"
    if name == "yunet" and not yunet_installed():
        raise RuntimeError("faces.detector 'yunet' needs the yuface package (Python <= 3.11 on x86-64): "
                           "pip install 'clip-moderation[yunet]'")
    if name == "yunet" and workers:
        from classifiers.detector_process import DetectorProcesses

        return DetectorProcesses(name, YuNetFaceDetector.min_window, workers, nice)
    return in_thread_detector(name)


class FaceFinder:
    """A detector with the service's rules: detection scale, smallest face, how many, order."""

    def __init__(self, detector: FaceDetector, detect_max_side: int = 512, min_face_px: int = 32,
                 max_faces: int = 10, min_confidence: float = 0.5) -> None:
        self.detector = detector
        self.detect_max_side = detect_max_side
        self.min_face_px = min_face_px
        self.max_faces = max_faces
        self.min_confidence = min_confidence

    def find(self, frame: Image.Image, full_size: tuple[int, int] | None = None) -> list[FaceBox]:
        """Faces in ``frame`` (upright RGB, possibly decoded at reduced scale), with boxes in the
        pixels of the upright original of size ``full_size`` (default: the frame's), largest first."""
        full_w, full_h = full_size or frame.size
        shrink = min(1.0, self.detect_max_side / max(frame.size))
        small = frame if shrink == 1.0 else frame.resize(
            (max(1, round(frame.width * shrink)), max(1, round(frame.height * shrink))), Image.Resampling.BILINEAR)
        sx, sy = full_w / small.width, full_h / small.height
        min_size = max(1, math.ceil(self.min_face_px / max(sx, sy)))
        faces = []
        for x, y, w, h, confidence in self.detector.detect(np.asarray(small.convert("RGB")), min_size):
            if confidence < self.min_confidence:
                continue
            box = _clip(round(x * sx), round(y * sy), round(w * sx), round(h * sy), full_w, full_h)
            if box is not None and min(box[2], box[3]) >= self.min_face_px:
                faces.append(FaceBox(*box, round(confidence, 4)))
        faces.sort(key=lambda f: (-f.area, f.y, f.x))
        return faces[:self.max_faces]


def _clip(x: int, y: int, w: int, h: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    if right <= left or bottom <= top:
        return None
    return left, top, right - left, bottom - top


def face_crop(frame: Image.Image, face: FaceBox, full_size: tuple[int, int] | None = None,
              margin: float = 0.25) -> Image.Image:
    """A square around ``face`` (``margin`` of its size added on each side, so hair, chin and
    glasses are in it), cut from ``frame`` (which may be a reduced-scale decode of the original
    of ``full_size``), clipped to the image."""
    full_w, full_h = full_size or frame.size
    sx, sy = frame.width / full_w, frame.height / full_h
    side = max(face.w, face.h) * (1 + 2 * margin)
    cx, cy = face.x + face.w / 2, face.y + face.h / 2
    left, top = max(0.0, (cx - side / 2) * sx), max(0.0, (cy - side / 2) * sy)
    right, bottom = min(frame.width, (cx + side / 2) * sx), min(frame.height, (cy + side / 2) * sy)
    return frame.crop((math.floor(left), math.floor(top), max(math.floor(left) + 1, math.ceil(right)),
                       max(math.floor(top) + 1, math.ceil(bottom))))


class FacesOfFirstFrame:
    """``decode_frames``'s ``first_frame`` hook: finds the faces in the frame as decoded, and
    keeps it to cut each face's crop, in the model's input shape, from it afterwards (``cut``),
    or from a sharper decode when a face is small in it (``detail_side``)."""

    def __init__(self, finder: FaceFinder, spec, margin: float = 0.25, crops: bool = True) -> None:
        self.finder, self.spec, self.margin, self.want_crops = finder, spec, margin, crops
        self.faces: list[FaceBox] = []
        self.crops: list[np.ndarray] = []
        self.frame: Image.Image | None = None
        self.full_size: tuple[int, int] = (0, 0)

    def __call__(self, frame: Image.Image, full_size: tuple[int, int] | None = None) -> None:
        self.full_size = full_size or frame.size
        self.faces = self.finder.find(frame, self.full_size)
        self.frame = frame if self.faces and self.want_crops else None

    def detail_side(self) -> int:
        """0 when every face's crop has at least half the model's input size in the frame as
        decoded; else the ``draft_at_least`` (shorter side) of a decode that gives them the full
        input size (a JPEG decoded at 1/4 scale for the detector would give a small face a
        blurry crop, upscaled 4x or more)."""
        if self.frame is None:
            return 0
        scale = self.frame.width / self.full_size[0]
        smallest = min(max(face.w, face.h) * (1 + 2 * self.margin) for face in self.faces)
        if scale >= 1.0 or smallest * scale >= self.spec.size / 2:  # up to 2x upscaled: sharp enough
            return 0
        return math.ceil(min(self.full_size) * min(1.0, self.spec.size / smallest))

    def cut(self, source: Image.Image | None = None) -> None:
        """The crops, from ``source`` (the same upright image at another scale) or the frame."""
        from classifiers.preprocess import fit_image

        frame = source if source is not None else self.frame
        if frame is not None:
            self.crops = [fit_image(face_crop(frame, face, self.full_size, self.margin), self.spec)
                          for face in self.faces]
        self.frame = None
