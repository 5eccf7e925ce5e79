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
from banks.pdq import MIN_SIDE, SAMPLES, box_filter, dihedral_frequencies, pdq_frequencies, pdq_hex, sampled_blur

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


def _degenerate_planes():
    """Planes with frequencies that are zero in exact arithmetic, so they sit at the median: exact mirror
    images (a blur window of odd width: sides up to 127 and 257-384), sides of 8 or 16 (the 64 samples
    repeat each pixel 8 or 4 times) and rows all alike."""
    photo = Image.fromarray(skdata.astronaut()).convert("L")
    for width in (100, 300):
        half = np.asarray(photo.resize((width // 2, 200), Image.Resampling.BOX))
        yield f"mirrored {width}", np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    for size in ((8, 200), (200, 16), (16, 16)):
        yield f"side {size}", np.asarray(photo.resize(size, Image.Resampling.BOX))
    yield "rows alike", np.tile(np.arange(256, dtype=np.uint8), (40, 2))


def test_degenerate_planes_differ_only_where_a_frequency_is_at_the_median():
    """There the bits are rounding noise in both implementations (the sums run in another order), so they
    differ; every frequency is still the reference's up to rounding, and so is the quality."""
    differing = {}
    for label, luma in _degenerate_planes():
        ours, quality = pdq_frequencies(luma)
        flat, ref_quality = pdqhash.compute_float(np.ascontiguousarray(np.stack([luma] * 3, axis=-1)))
        reference = np.asarray(flat, dtype=np.float64)[::-1].reshape(16, 16)
        assert quality == ref_quality, label
        tolerance = 1e-6 * SAMPLES * float(luma.max())  # float32 rounding of sums over 64 samples, far below a
        # photo's frequencies (hundreds to thousands)
        np.testing.assert_allclose(ours, reference, atol=tolerance, err_msg=label)
        ref_median = np.partition(reference.ravel(), 127)[127]
        changed = (ours.ravel() > np.partition(ours.ravel(), 127)[127]) != (reference.ravel() > ref_median)
        assert (np.abs(reference.ravel()[changed] - ref_median) < tolerance).all(), label
        differing[label] = int(changed.sum())
    print("bits apart from the reference:", differing)


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


@pytest.mark.parametrize("length", [5, 8, 16, 63, 64, 100, 127, 128, 257, 384, 511, 512, 1000, 1411])
def test_sampled_weights_are_the_rows_of_the_box_filter_applied_twice(length):
    index, weights = sampled_blur(length)
    blur = np.linalg.matrix_power(box_filter(length, (length + 127) // 128), 2)
    dense = np.zeros((SAMPLES, length))
    np.add.at(dense, (np.arange(SAMPLES)[:, None], index), weights)
    rows = [int(((i + 0.5) * length) / SAMPLES) for i in range(SAMPLES)]
    np.testing.assert_allclose(dense, blur[rows], atol=1e-7)
    assert (index >= 0).all() and (index < length).all()


def test_float_and_wider_integer_planes_hash_as_the_uint8_plane():
    luma = np.asarray(Image.fromarray(skdata.camera()).resize((300, 200), Image.Resampling.BOX))
    expected = pdq_frequencies(luma)
    for dtype in (np.float32, np.float64, np.int64, np.uint16):
        frequencies, quality = pdq_frequencies(luma.astype(dtype))
        assert quality == expected[1] and pdq_hex(frequencies) == pdq_hex(expected[0]), dtype


def test_planes_under_the_reference_minimum_get_the_zero_hash():
    for shape in ((1, 1), (4, 9), (9, MIN_SIDE - 1)):
        frequencies, quality = pdq_frequencies(np.full(shape, 200, np.uint8))
        assert quality == 0 and pdq_hex(frequencies) == "0" * 64
    with pytest.raises(ValueError):
        pdq_frequencies(np.zeros((8, 8, 3), np.uint8))
