"""Generated labelled image sets whose classes a linear probe on any image embedding can learn.

For tests and demos of ``moderation train`` where real photographs and real weights are not
at hand: classes differ in colour, shape or texture, every image varies in size, position and
noise. ``python -m evaluation.synthetic DIR [colours|shapes|textures] [PER_CLASS] [SEED]`` writes
a folder per class.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}
SHAPES = ("circle", "square", "stripes")
TEXTURES = ("smooth", "checks", "noise")


def _canvas(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(48, 160)), int(rng.integers(48, 160))
    grey = int(rng.integers(90, 170))
    return Image.new("RGB", (w, h), (grey, grey, grey))


def colour_image(label: str, rng: np.random.Generator) -> Image.Image:
    base = np.array(COLOURS[label])
    image = _canvas(rng)
    pixels = np.clip(base + rng.integers(-45, 46, 3) + rng.normal(0, 12, (image.height, image.width, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def shape_image(label: str, rng: np.random.Generator) -> Image.Image:
    image = _canvas(rng)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    s = int(min(w, h) * rng.uniform(0.5, 0.8))
    x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    ink = tuple(int(v) for v in rng.integers(0, 256, 3))
    if label == "circle":
        draw.ellipse((x0, y0, x0 + s, y0 + s), fill=ink)
    elif label == "square":
        draw.rectangle((x0, y0, x0 + s, y0 + s), fill=ink)
    else:
        step = max(4, s // 5)
        for x in range(0, w, 2 * step):
            draw.rectangle((x, 0, x + step - 1, h), fill=ink)
    return image


def texture_image(label: str, rng: np.random.Generator) -> Image.Image:
    image = _canvas(rng)
    h, w = image.height, image.width
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if label == "smooth":
        t = np.linspace(0, 1, w)[None, :, None]
        pixels = a * (1 - t) + b * t + np.zeros((h, 1, 1))
    elif label == "checks":
        step = int(rng.integers(3, 7))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = (((yy // step) + (xx // step)) % 2)[..., None]
        pixels = np.where(mask, a, b)
    else:
        pixels = rng.integers(0, 256, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


MAKERS = {"colours": (tuple(COLOURS), colour_image), "shapes": (SHAPES, shape_image),
          "textures": (TEXTURES, texture_image)}


def write_dataset(root: str | Path, kind: str = "colours", per_class: int = 40, seed: int = 0) -> Path:
    """A folder per class under ``root``, ``per_class`` PNGs each; returns ``root``."""
    labels, make = MAKERS[kind]
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label in labels:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make(label, rng).save(folder / f"{label}-{i:04d}.png")
    return root


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    write_dataset(args[0], args[1] if len(args) > 1 else "colours", int(args[2]) if len(args) > 2 else 40,
                  int(args[3]) if len(args) > 3 else 0)
