"""Faces: what detection costs per image, and service throughput with faces on and off.

    python -m bench.faces [--size base|tiny] [--model DIR] [--concurrency 32] [--requests 600]
                          [--detector-only] [--repeats 20]

1. In this process, one thread (as on a replica's decode thread): each detector on a real face
   (scikit-image's astronaut, pasted into a generated photo) at 1024x768 and 4000x3000, from the
   JPEG's bytes: decode alone (as the service does without faces), then decode + detection +
   the face crops, as the service does with faces on.
2. One model replica (`moderation-serve`, serve_config.yaml's settings), c uploads in flight of
   1024x768 JPEGs with a face, requesting every classifier: faces off, on with each detector,
   boxes only; then generated photos without faces, faces off and on. The result cache is off
   (every request decodes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench.cache import measure
from bench.photos import encode, photo_like


def photo_with_face(width: int, height: int, seed: int = 0) -> bytes:
    """A generated photo with the astronaut's portrait (her face ~1/5 of the height) in it."""
    from skimage import data

    image = photo_like(width, height, seed)
    side = int(height * 0.9)
    portrait = Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.BICUBIC)
    image.paste(portrait, ((width - side) // 2 + (seed * 37) % max(1, (width - side) // 2), height - side))
    return encode(image, "JPEG", quality=90)


def time_detection(detector: str, data: bytes, repeats: int) -> dict:
    import cv2

    from banks.hashes import pdq_draft_size
    from classifiers.faces import FaceFinder, FacesOfFirstFrame, load_detector
    from classifiers.preprocess import ImageSpec, decode_frames, upright_first_frame
    from deployments.settings import FacesSettings

    cv2.setNumThreads(1)
    settings, spec = FacesSettings(detector=detector), ImageSpec()
    finder = FaceFinder(load_detector(detector), settings.detect_max_side, settings.min_face_px,
                        settings.max_faces, settings.min_confidence)

    def run(with_faces: bool) -> tuple[float, int]:
        hook = FacesOfFirstFrame(finder, spec, settings.crop_margin) if with_faces else None
        start = time.perf_counter()
        # As the replica: a JPEG is draft-decoded no smaller than PDQ's floor and the detector's side.
        decode_frames(data, spec, first_frame=hook, draft_at_least=settings.detect_max_side if hook else 0,
                      draft_floor=pdq_draft_size)
        if hook is not None:  # the crops, from a sharper decode where a face is small in this one
            detail = hook.detail_side()
            hook.cut(upright_first_frame(data, draft_at_least=detail) if detail else None)
        return (time.perf_counter() - start) * 1000, len(hook.faces) if hook else 0

    run(True)
    plain = statistics.median(run(False)[0] for _ in range(repeats))
    timed = [run(True) for _ in range(repeats)]
    with_faces = statistics.median(t for t, _ in timed)
    return {"decode_ms": round(plain, 1), "with_faces_ms": round(with_faces, 1),
            "faces_cost_ms": round(with_faces - plain, 1), "faces": timed[0][1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "base"), default="base")
    parser.add_argument("--model", help="checkpoint directory (default: a random one of --size)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--detector-only", action="store_true", help="only part 1 (no service)")
    args = parser.parse_args(argv)

    from importlib.util import find_spec

    detectors = ["haar"] + (["yunet"] if find_spec("yuface") else [])
    print("| detector | image | decode only ms | decode + faces ms | faces cost ms | faces found |\n"
          "|---|---|---|---|---|---|")
    for detector in detectors:
        for width, height in ((1024, 768), (4000, 3000)):
            r = time_detection(detector, photo_with_face(width, height), args.repeats)
            print(f"| {detector} | {width}x{height} | {r['decode_ms']} | {r['with_faces_ms']} | {r['faces_cost_ms']} "
                  f"| {r['faces']} |", flush=True)
    if args.detector_only:
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-faces-"))
    model = args.model
    if not model:
        from classifiers.random_checkpoint import build_random_clip

        model = str(build_random_clip(work / f"clip-{args.size}", size=args.size))
    with_face = [photo_with_face(1024, 768, seed) for seed in range(8)]
    without = [encode(photo_like(1024, 768, seed), "JPEG", quality=90) for seed in range(8)]
    plans = {"faces off": ({"enabled": False}, with_face),
             **{f"faces on ({d})": ({"detector": d}, with_face) for d in detectors},
             f"faces on ({detectors[-1]}), boxes only": ({"detector": detectors[-1], "attributes": False}, with_face),
             "no faces in the images: faces off": ({"enabled": False}, without),
             f"no faces in the images: faces on ({detectors[-1]})": ({"detector": detectors[-1]}, without)}
    runs = {name: measure(model, work, f"run{n}", {"cache_size": 0}, args.concurrency, args.requests,
                          images=images, overrides={"faces": faces})
            for n, (name, (faces, images)) in enumerate(plans.items())}
    print(f"\n| 1024x768 JPEGs (a face in each unless said), all classifiers, c={args.concurrency} "
          "| img/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} ({r['requests']} requests) | {r['images_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
              f"| {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
