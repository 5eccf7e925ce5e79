"""Backfill throughput against the model ceiling and the HTTP service, on the same images.

    python -m bench.backfill [--model DIR] [--images 2000] [--concurrency 32] [--requests 600]

One run, one machine: (1) the model ceiling (``bench.run.model_ceiling``: the image tower alone
on preprocessed pixels, each engine, the best); (2) ``moderation backfill`` of ``--images``
generated 1024x768 JPEGs on disk (Ray Data, one scoring actor with the machine's CPUs less 0.5);
(3) the HTTP service (one model replica, serve_config.yaml's settings) at c uploads in flight,
the same images in rotation. Both (2) and (3) run every classifier with the result cache and
face detection off (the ceiling has neither; PDQ hashing stays on, as by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: random full-size ViT-B/32)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args(argv)

    from bench.cache import measure
    from bench.photos import jpeg
    from bench.run import model_ceiling
    from classifiers.engines import openvino_available
    from deployments.forward import default_lanes

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    model = args.model
    if not model:
        from classifiers.random_checkpoint import build_random_clip

        model = str(build_random_clip(work / "clip-base", size="base"))
    folder = work / "images"
    folder.mkdir()
    for n in range(args.images):
        (folder / f"{n:05d}.jpg").write_bytes(jpeg(1024, 768, seed=n, quality=90))
    threads = os.cpu_count() or 2
    ceilings = {engine: model_ceiling(model, "cpu", "auto", 16, threads, default_lanes("cpu", threads), engine)
                for engine in ["torch"] + (["openvino"] if openvino_available() else [])}
    best = max(ceilings.values(), key=lambda c: c["images_per_s"])

    from backfill.job import BackfillOptions, run_backfill, service_args

    overrides = {"model": model, "faces": {"enabled": False}}
    done = run_backfill(BackfillOptions(str(folder), str(work / "table"), progress=False),
                        service_args(overrides), out=sys.stderr)
    images = [(folder / f"{n:05d}.jpg").read_bytes() for n in range(min(args.images, 64))]
    served = measure(model, work, "service", {"cache_size": 0}, args.concurrency, args.requests, images=images,
                     overrides={"faces": {"enabled": False}})
    ceiling, backfill, service = best["images_per_s"], done.get("steady_images_per_s"), served["images_per_s"]
    report = {"ceiling": ceilings, "backfill": done, "service": served}
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"| 1024x768 JPEGs, random ViT-B/32, {threads} CPUs | img/s | of the ceiling |\n|---|---|---|")
    print(f"| model ceiling ({best['engine']}, batch 16) | {ceiling} | 100 % |")
    print(f"| backfill, {done['images']} images (steady; {done['images'] / done['elapsed_s']:.1f} "
          f"with start-up) | {backfill} | {100 * backfill / ceiling:.0f} % |")
    print(f"| HTTP service, c={args.concurrency} ({served['requests']} requests) | {service} | "
          f"{100 * service / ceiling:.0f} % |")
    print(f"backfill / service: {backfill / service:.2f}x; report: {work / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
