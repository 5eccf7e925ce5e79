"""A model's fingerprint: its embeddings of a few fixed probe images.

A trained head is a matrix over one model's image embeddings; on another model's embeddings it
returns confident nonsense. A head file therefore carries the embeddings its model gave for
``PROBES`` images, and a replica compares them with its own: the same weights give cosines near
1 (float32 vs bfloat16 included), another checkpoint gives unrelated vectors. The probes are
computed from formulas, not a random generator, so they are the same on every machine.
"""

from __future__ import annotations

import weakref

import numpy as np

PROBE_COUNT = 8
PROBE_SIZE = 96
# The least cosine, over the probes, between a head's fingerprint and the serving model's.
MIN_COSINE = 0.98


def probe_images(count: int = PROBE_COUNT, size: int = PROBE_SIZE) -> list[np.ndarray]:
    """``count`` distinct uint8 ``(size, size, 3)`` images: coloured waves and gradients."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    images = []
    for k in range(count):
        channels = [
            0.5 + 0.5 * np.sin(2 * np.pi * ((k + 1) * x + (c + 1) * y * (k % 3 + 1)) + k + c)
            for c in range(3)
        ]
        image = np.stack(channels, axis=-1) * (0.4 + 0.6 * ((x + y * (k % 2)) % 1.0))[..., None]
        images.append(np.round(image * 255).astype(np.uint8))
    return images


_computed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> its fingerprint


def fingerprint(encoder) -> np.ndarray:
    """``encoder``'s L2-normalised embeddings of the probe images, through the service's own
    preprocessing for that encoder; ``(PROBE_COUNT, dim)`` float32, computed once per encoder."""
    from classifiers.preprocess import prepare_array

    found = _computed.get(encoder)
    if found is None:
        frames = [prepare_array(image, encoder.image_spec)[0] for image in probe_images()]
        found = _computed[encoder] = np.asarray(encoder.encode_images(frames), np.float32)
        found.flags.writeable = False
    return found


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The least cosine between matching rows of two fingerprints (-1 when shapes differ)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or not len(a):
        return -1.0
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min((a * b).sum(axis=1) / np.clip(norms, 1e-12, None)))
