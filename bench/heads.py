"""Trained heads: how long training takes on cached embeddings, and what serving them costs.

``python -m bench.heads [--images 1000] [--work DIR]`` prints:

- fitting time (penalty search by 5-fold cross-validation over 4 penalties, then the final
  fit) on 1,000 and 10,000 embeddings of the full-size ViT-B/32's width (512);
- ``moderation train`` end to end on ``--images`` generated images with the full-size random
  ViT-B/32: the first run (images encoded) and a second run (every embedding from the cache);
- the per-image cost of scoring 20 trained heads (the service's ``HeadStack``) next to the
  per-image cost of one forward pass in a batch of 16 on the same model.

Random weights: speed does not depend on weight values (accuracy is in the tests).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_embeddings(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``classes`` random centres (as real embeddings cluster by content)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(scale=2.0, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def time_fits(dim: int = 512) -> list[str]:
    from evaluation.fit import cross_validate

    lines = []
    for n in (1_000, 10_000):
        x, y = synthetic_embeddings(n, dim, 3)
        start = time.perf_counter()
        cv = cross_validate(x, y, y, True, 3)
        exclusive_s = time.perf_counter() - start
        multi = np.eye(5, dtype=int)[np.random.default_rng(1).integers(0, 5, n)]
        multi[:, 0] |= (y == 0)
        start = time.perf_counter()
        cross_validate(x, multi, np.unique(multi, axis=0, return_inverse=True)[1].reshape(-1), False, 5)
        attributes_s = time.perf_counter() - start
        lines.append(f"fit {n:>6} embeddings x {dim}: exclusive (3 labels) {exclusive_s:6.2f} s "
                     f"(l2 {cv.fit.l2:g}), attributes (5 labels) {attributes_s:6.2f} s")
    return lines


def time_training(encoder, images: int, work: Path) -> list[str]:
    from classifiers.trained import head_path
    from evaluation.dataset import load_samples
    from evaluation.synthetic import write_dataset
    from evaluation.train import TrainOptions, train

    data = write_dataset(work / "colours", "colours", per_class=images // 3)
    samples = load_samples(data)
    lines = []
    for run in ("first run (encodes)", "second run (cache)"):
        opts = TrainOptions(dataset=str(data), name="bench", head_file=head_path(work / "heads", "bench"),
                            out_dir=work / "report", unsafe=("red",), target_precision=0.95,
                            cache=str(work / "cache.sqlite"), progress=False)
        start = time.perf_counter()
        report = train(samples, encoder, opts)
        lines.append(f"moderation train, {len(samples)} images, {run}: {time.perf_counter() - start:6.2f} s "
                     f"(encoded {report['cache']['images_encoded']}, held-out accuracy "
                     f"{report['training']['metrics']['accuracy']:.3f})")
    return lines


def time_scoring(encoder, heads: int = 20, batch: int = 16, repeats: int = 5) -> list[str]:
    from classifiers.fingerprint import fingerprint
    from classifiers.trained import HeadStack, TrainedHead, build_label_set

    rng = np.random.default_rng(0)
    dim = encoder.dim
    trained = [TrainedHead(build_label_set(f"h{i}", "exclusive" if i % 2 else "attributes",
                                           [f"l{j}" for j in range(4)], ["l0"], 0.5),
                           rng.normal(size=(4, dim)).astype(np.float32), np.zeros(4, np.float32),
                           np.zeros((8, dim), np.float32)) for i in range(heads)]
    embedding = fingerprint(encoder)[0]
    stack, names = HeadStack({h.name: h for h in trained}), [h.name for h in trained]
    stack.score(names, embedding)  # warm up
    start = time.perf_counter()
    rounds = 500
    for _ in range(rounds):
        stack.score(names, embedding)
    heads_ms = (time.perf_counter() - start) * 1000 / rounds
    pixels = np.random.default_rng(1).integers(0, 256, (batch, encoder.image_spec.size,
                                                        encoder.image_spec.size, 3), dtype=np.uint8)
    encoder.encode_images(pixels)  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.encode_images(pixels)
    forward_ms = (time.perf_counter() - start) * 1000 / (repeats * batch)
    return [f"per image: {heads} trained heads scored {heads_ms:.3f} ms; forward pass (batch {batch}, "
            f"{str(encoder.dtype).removeprefix('torch.')}) {forward_ms:.2f} ms; heads = "
            f"{100 * heads_ms / forward_ms:.2f} % of the forward pass"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.heads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--work", help="folder for the checkpoint, images and cache (default: a temporary one)")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    import torch

    from classifiers.model import load_clip
    from classifiers.random_checkpoint import build_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        checkpoint = work / "clip-base"
        if not (checkpoint / "config.json").exists():
            build_random_checkpoint(checkpoint, size="base")
        encoder = load_clip(str(checkpoint), "cpu", args.dtype)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model ViT-B/32 (random), "
              f"{str(encoder.dtype).removeprefix('torch.')}")
        for line in [*time_fits(), *time_training(encoder, args.images, work), *time_scoring(encoder)]:
            print(line, flush=True)


if __name__ == "__main__":
    main()
