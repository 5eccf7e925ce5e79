"""Meta's PDQ perceptual hash of a luma plane, computed as two small linear maps.

The reference (``pdq/cpp/hashing/pdqhashing.cpp`` and ``pdq/cpp/downscaling/downscaling.cpp`` in
facebook/ThreatExchange; the ``pdqhash`` package wraps it) blurs the whole luma plane with a Jarosz tent
filter (a box filter along the rows, then along the columns, twice; the window is ``(side + 127) // 128``),
keeps 64x64 samples of the blurred plane at the block centres, takes the 16x16 lowest non-DC frequencies of
their DCT, and sets each of the 256 bits where a frequency is above their median. Every step before the
median is linear and separable, and only 64 rows and 64 columns of the blurred plane are ever read, so the
64x64 samples are ``R @ luma @ C.T``, where a row of ``R`` (or ``C``) is the two box passes' weights for one
sampled row (column): 7 non-zero weights for a 512-pixel side. Only those weights are applied here, to the
pixels they touch: 0.13 ms for 512x512 where the reference's filter over every pixel takes about 4.5 ms
(one thread, this repository's 2-vCPU Xeon); the weights of a side length not seen lately take 0.25 ms
more to build (up to 512; 1024 lengths are kept).

Results: the reference's (``pdqhash.compute`` / ``compute_dihedral`` / ``compute_float``;
``tests/unit/test_pdq.py``), up to float rounding: the sums run in another order. On photographs at many
sizes and on noise, every hash of the 8 and the quality are the reference's bit for bit. Where some
frequencies are zero in exact arithmetic they sit at the median, their bits are rounding noise here as in
the reference, and the hashes differ (by 7 to 148 bits in the tests, quality still 100 and equal): planes
that are exact mirror images across an axis whose blur window is odd (sides up to 127 and 257-384), a side
of exactly 8 or 16 pixels (the 64 samples repeat each pixel), rows all alike. Real photographs are none of
these; a synthetic logo or icon can be.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLES = 64  # the blurred plane is sampled 64x64
FREQUENCIES = 16  # the DCT's 16x16 lowest frequencies but DC
MIN_SIDE = 5  # MIN_HASHABLE_DIM: a smaller plane gets the all-zero hash, quality 0

# dct_matrix_64: row i is the cosine of frequency i + 1 over 64 samples.
_DCT = (np.sqrt(2.0 / SAMPLES) * np.cos(
    (np.pi / 2.0 / SAMPLES) * np.arange(1, FREQUENCIES + 1)[:, None] * (2 * np.arange(SAMPLES)[None, :] + 1)
)).astype(np.float32)

_INDEX = np.arange(FREQUENCIES)
_ODD_ROW = (_INDEX[:, None] & 1).astype(bool)
_ODD_COLUMN = (_INDEX[None, :] & 1).astype(bool)
_ODD_SUM = ((_INDEX[:, None] + _INDEX[None, :]) & 1).astype(bool)


def box_filter(length: int, window: int) -> np.ndarray:
    """``box1DFloat`` as a ``(length, length)`` matrix: output ``o`` averages the inputs from
    ``o - (window - half)`` to ``o + half - 1`` (``half = (window + 2) // 2``) that lie inside the vector."""
    matrix = np.zeros((length, length))
    for out in range(length):
        low, high = _window(out, length, window)
        matrix[out, low:high + 1] = 1.0 / (high - low + 1)
    return matrix


def _window(position: int, length: int, window: int) -> tuple[int, int]:
    """First and last input ``box1DFloat`` averages for output ``position`` (``box_filter``'s rows)."""
    half = (window + 2) // 2
    return max(0, position - (window - half)), min(length - 1, position + half - 1)


@functools.lru_cache(maxsize=1024)
def sampled_blur(length: int) -> tuple[np.ndarray, np.ndarray]:
    """For a side of ``length`` pixels: which pixels each of the 64 samples reads (``(64, k)`` indices) and
    with what weights (``(64, k)`` float32; 0 where a row has fewer than ``k``): the rows of the box filter
    applied twice (``PDQ_NUM_JAROSZ_XY_PASSES``) at ``decimateFloat``'s positions, built from those rows alone
    (the second pass averages the first pass's outputs in its window): about 0.25 ms a length up to 512, 3 ms
    at 4000."""
    window = (length + 2 * SAMPLES - 1) // (2 * SAMPLES)
    starts, rows = [], []
    for i in range(SAMPLES):
        low, high = _window(int(((i + 0.5) * length) / SAMPLES), length, window)
        first, last = _window(low, length, window)[0], _window(high, length, window)[1]
        row = [0.0] * (last - first + 1)
        for middle in range(low, high + 1):
            a, b = _window(middle, length, window)
            share = 1.0 / ((high - low + 1) * (b - a + 1))
            for pixel in range(a - first, b - first + 1):
                row[pixel] += share
        starts.append(first)
        rows.append(row)
    width = max(len(row) for row in rows)
    index = np.array([[start + min(k, len(row) - 1) for k in range(width)] for start, row in zip(starts, rows)])
    weights = np.array([row + [0.0] * (width - len(row)) for row in rows], dtype=np.float32)
    return index, weights


def pdq_frequencies(luma: np.ndarray) -> tuple[np.ndarray, int]:
    """The 16x16 DCT frequencies (float32) that PDQ's bits compare to their median, and the quality
    (0..100), of a 2-D luma plane (uint8 or float)."""
    luma = np.asarray(luma)
    if luma.ndim != 2:
        raise ValueError(f"expected a 2-D luma plane, got shape {luma.shape}")
    rows, columns = luma.shape
    if rows < MIN_SIDE or columns < MIN_SIDE:
        return np.zeros((FREQUENCIES, FREQUENCIES), np.float32), 0
    row_index, row_weights = sampled_blur(rows)
    column_index, column_weights = sampled_blur(columns)
    # 64 blurred rows (every column), then 64 samples of each: only the pixels the samples read.
    blurred_rows = np.einsum("ik,ikj->ij", row_weights, luma[row_index], dtype=np.float32, casting="unsafe")
    samples = np.einsum("jk,ijk->ij", column_weights, blurred_rows[:, column_index], dtype=np.float32)
    return _DCT @ samples @ _DCT.T, _quality(samples)


def _quality(samples: np.ndarray) -> int:
    """``pdqImageDomainQualityMetric``: the sum of the 64x64 samples' neighbour differences, each scaled
    by 100 / 255 and truncated to a whole number, over 90, at most 100."""
    down = np.trunc((samples[:-1] - samples[1:]) * np.float32(100) / np.float32(255))
    across = np.trunc((samples[:, :-1] - samples[:, 1:]) * np.float32(100) / np.float32(255))
    return min(100, int(np.abs(down).sum(dtype=np.int64) + np.abs(across).sum(dtype=np.int64)) // 90)


def dihedral_frequencies(frequencies: np.ndarray) -> tuple[np.ndarray, ...]:
    """The frequencies of the plane turned and mirrored, from the original's (``dct16OriginalTo*``), in
    ``banks.hashes.DIHEDRAL``'s order: original, rotate90, rotate180, rotate270, flip_x, flip_y,
    flip_plus1, flip_minus1."""
    f = frequencies
    return (
        f,
        np.where(_ODD_COLUMN, f, -f).T,
        np.where(_ODD_SUM, -f, f),
        np.where(_ODD_ROW, f, -f).T,
        np.where(_ODD_ROW, f, -f),
        np.where(_ODD_COLUMN, f, -f),
        f.T,
        np.where(_ODD_SUM, -f, f).T,
    )


def pdq_hex(frequencies: np.ndarray) -> str:
    """The hash as 64 lowercase hex chars: bit ``16 * i + j`` set where frequency ``(i, j)`` is above the
    median (``torben``: the 128th smallest of the 256), bit 255 first (python-threatexchange's form)."""
    flat = frequencies.ravel()
    median = np.partition(flat, 127)[127]
    return np.packbits((flat > median)[::-1]).tobytes().hex()
