"""Generated photo-like images (no binary files in the repo), shared by tests and benchmarks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients with a few solid shapes: JPEG-friendly, with edges at every scale."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 2).tolist() + [rng.uniform(0, 6.28)]
        wave = np.sin(x / width * fx * 3.14 + phase) * np.cos(y / height * fy * 3.14)
        channels.append(127 + 100 * wave)
    array = np.stack(channels, axis=-1)
    for _ in range(4):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(min(width, height) // 10, min(width, height) // 3)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        array[mask] = rng.integers(0, 255, 3)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(width: int = 320, height: int = 240, seed: int = 0, quality: int = 90) -> bytes:
    return encode(photo_like(width, height, seed), "JPEG", quality=quality)
