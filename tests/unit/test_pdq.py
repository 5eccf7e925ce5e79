"""banks.pdq against Meta's reference (the ``pdqhash`` package: ThreatExchange's C++ for numpy).

Photographs are scikit-image's; each is hashed at several sizes (512x512 as the service hashes a large image,
as it is, and odd small sizes, where the blur windows and sample positions differ), with noise planes too.
"""

from __future__ import annotations

import numpy as np
import pdqhash
import pytest
from PIL import Image

from banks.hashes import DIHEDRAL, bits_to_hex, pdq_dihedral, pdq_hash, pdq_input
from banks.pdq import MIN_SIDE, box_filter, dihedral_frequencies, pdq_frequencies, pdq_hex

skdata = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "retina", "hubble_deep_field",
          "immunohistochemistry", "page", "text", "brick", "grass", "gravel", "colorwheel", "logo", "cat")
SIZES = ((512, 512), (512, 384), (384, 512), (300, 200), (97, 61), (512, 40), (64, 64), (5, 9))


def _planes():
    rng = np.random.default_rng(7)
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skdata, name)()).convert("L")
        for size in SIZES:
            yield f"{name} {size}", np.asarray(photo.resize(size, Image.Resampling.BOX))
        yield f"{name} as it is", np.asarray(photo)
    for shape in ((512, 512), (333, 77), (6, 700)):
        yield f"noise {shape}", rng.integers(0, 256, shape, dtype=np.uint8)


def _reference(luma: np.ndarray):
    """pdqhash takes RGB; three equal planes make its float luma exactly the plane."""
    return pdqhash.compute_dihedral(np.ascontiguousarray(np.stack([luma] * 3, axis=-1)))


def test_hashes_and_quality_are_the_reference_bit_for_bit():
    planes = 0
    for label, luma in _planes():
        frequencies, quality = pdq_frequencies(luma)
        hashes, ref_quality = _reference(luma)
        assert quality == ref_quality, label
        ours = [pdq_hex(f) for f in dihedral_frequencies(frequencies)]
        assert ours == [bits_to_hex(bits) for bits in hashes], label
        planes += 1
    assert planes == len(PHOTOS) * (len(SIZES) + 1) + 3


def test_service_hashes_match_the_reference_on_the_service_input():
    image = Image.fromarray(skdata.astronaut()).resize((1024, 768), Image.Resampling.BICUBIC)
    luma = pdq_input(image)
    assert luma.shape == (512, 512) and luma.dtype == np.uint8
    bits, quality = pdqhash.compute(np.ascontiguousarray(np.stack([luma] * 3, axis=-1)))
    assert pdq_hash(image) == (bits_to_hex(bits), quality)
    hashes, ref_quality = _reference(luma)
    assert pdq_dihedral(image) == (tuple(bits_to_hex(b) for b in hashes), ref_quality)
    assert len(DIHEDRAL) == len(hashes)


def _box1d_running_sum(vector: np.ndarray, window: int) -> np.ndarray:
    """The reference's ``box1DFloat`` loop as written (phases of a running sum), for comparison."""
    half = (window + 2) // 2
    out, total, size, left, right = [], 0.0, 0, 0, 0
    for _ in range(half - 1):
        total, size, right = total + vector[right], size + 1, right + 1
    for _ in range(window - half + 1):
        total, size, right = total + vector[right], size + 1, right + 1
        out.append(total / size)
    for _ in range(len(vector) - window):
        total, left, right = total + vector[right] - vector[left], left + 1, right + 1
        out.append(total / size)
    for _ in range(half - 1):
        total, size, left = total - vector[left], size - 1, left + 1
        out.append(total / size)
    return np.array(out)


@pytest.mark.parametrize("length,window", [(16, 7), (16, 8), (512, 4), (100, 1), (9, 2), (5, 5), (1400, 11)])
def test_box_filter_matrix_is_the_reference_running_sum(length, window):
    vector = np.random.default_rng(length).random(length)
    np.testing.assert_allclose(box_filter(length, window) @ vector, _box1d_running_sum(vector, window), rtol=1e-9)


def test_planes_under_the_reference_minimum_get_the_zero_hash():
    for shape in ((1, 1), (4, 9), (9, MIN_SIDE - 1)):
        frequencies, quality = pdq_frequencies(np.full(shape, 200, np.uint8))
        assert quality == 0 and pdq_hex(frequencies) == "0" * 64
    with pytest.raises(ValueError):
        pdq_frequencies(np.zeros((8, 8, 3), np.uint8))
