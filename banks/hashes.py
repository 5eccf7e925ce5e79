"""Image hashes for hash banks: SHA-256 of the bytes as received and Meta's PDQ perceptual hash.

PDQ is computed by ``banks.pdq`` (the reference's arithmetic as two small linear maps: the ``pdqhash``
package's results, Meta's C++ wrapped for numpy, bit for bit on photographs; see there for the degenerate
planes where rounding decides bits). The reference's cost grows with the pixel count
(2.4 ms at 512x384, 44 ms at 1024x768, 1.37 s at 4000x3000 measured here with ``pdqhash``), so images are
reduced first, as Meta's reference tools do:

* ``facebook/ThreatExchange`` ``pdq/cpp/io/pdqio.cpp`` (the C++ reference hasher ``pdq-photo-hasher``):
  ``DOWNSAMPLE_DIMS = 512``; "The two-pass Jarosz filter is prohibitively expensive for larger images so we
  use off-the-shelf downsampling to get to an intermediate size": when the height or the width exceeds 512
  the image becomes exactly 512x512 (``CImg::resize(512, 512)``; the aspect ratio is not kept; CImg's
  default interpolation, nearest neighbour). Smaller images are hashed as they are.
* ``pdq/php/pdqhasher.php`` downsamples first too (GD ``imagecopyresampled``, an area-averaging resample, to
  128x128): "Don't worry about aspect ratio since PDQ will squarify anyway" (PDQ's blur and decimation map
  any image onto 64x64).
* ``python-threatexchange`` (``signal_type/pdq/pdq_hasher.py``, which hasher-matcher-actioner uses) and the
  Java hasher hash the full-resolution pixels, with no reduction. They also ignore EXIF orientation, as the
  PHP hasher says ThreatExchange's PDQ hashes do.

Here: the reference geometry (exactly 512x512 once either side exceeds 512), with a box (area-average)
filter instead of nearest neighbour. On the photos measured (scikit-image's, some at 4000x3000) the two
filters give hashes 0-2 bits apart, but nearest neighbour aliases on fine detail: on those photos with a
3-pixel halftone screen, shifting the image by 2 pixels moved the nearest-neighbour hash by 8-18 bits and
the box hash by 0-2. Both reductions are 2-18 bits (mean 9) from hashing the unreduced pixels, as
python-threatexchange does.

Matching: ``PDQ_MATCH_THRESHOLD`` (31, ``PDQ_CONFIDENT_MATCH_THRESHOLD`` in python-threatexchange's
``pdq_utils.py``) and ``PDQ_MIN_QUALITY`` (50: ``PdqSignal.QUALITY_THRESHOLD``, "Images with less than
quality 50 are too unreliable to match on"; its ``hash_from_bytes`` returns no hash below it).

JPEG draft decoding (``Image.draft``): an image larger than 512 may be decoded at a DCT-domain scale that
keeps both sides at least 256 (``pdq_draft_size``) and then resized to 512x512 (bicubic, since one side may
be below 512): on scikit-image's photos at 1024x768, 768x1024, 2048x1536 and 4000x3000 (JPEG, quality 90;
76 images) that is 1.1 bits from the full decode on average, at most 6 (decodes kept >= 512 a side: 0.8,
at most 6; >= 128: 2.6, at most 14). Hashing such a decode as it is, not brought to 512x512, moved hashes
by 8.9 bits on average and up to 38: the geometry is decided by the original's size (``full_size``), not
the decode's.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from banks.pdq import dihedral_frequencies, pdq_frequencies, pdq_hex

PDQ_MAX_SIDE = 512
PDQ_DRAFT_SIDE = 256  # a JPEG over 512 may be draft-decoded down to this a side (see above)
PDQ_RESAMPLE = Image.Resampling.BOX
PDQ_MATCH_THRESHOLD = 31
PDQ_MIN_QUALITY = 50
PDQ_BITS = 256
HASH_HEX_LEN = 64  # both kinds: SHA-256 and PDQ are 256 bits
CODE_BYTES = 32

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageHashes:
    sha256: str  # 64 lowercase hex chars, of the bytes as received
    pdq: str | None  # 64 lowercase hex chars (256 bits), None when not computed
    pdq_quality: int | None  # 0..100 from the PDQ reference
    # PDQ of the image turned and mirrored (the other 7 of PDQ's dihedral hashes), when made:
    # matched too, so a rotated or mirrored copy, or a hash made without the EXIF turn, matches.
    pdq_turned: tuple[str, ...] = ()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_hashes(data: bytes, image: Image.Image | np.ndarray | None = None,
                 full_size: tuple[int, int] | None = None) -> ImageHashes:
    """SHA-256 of ``data``; PDQ of ``image`` (the decoded picture, maybe draft-decoded from an original of
    ``full_size``) when one is given."""
    if image is None:
        return ImageHashes(sha256_hex(data), None, None)
    pdq, quality = pdq_hash(image, full_size)
    return ImageHashes(sha256_hex(data), pdq, quality)


def pdq_draft_size(width: int, height: int) -> tuple[int, int]:
    """The smallest size a JPEG of ``width`` x ``height`` may be draft-decoded to for PDQ (PIL picks the
    largest DCT-domain scale, 1/2, 1/4 or 1/8, whose result is no smaller): both sides at least
    ``PDQ_DRAFT_SIDE`` for an image that PDQ brings to 512x512 anyway, else the full size (hashed as it is)."""
    if width > PDQ_MAX_SIDE or height > PDQ_MAX_SIDE:
        return min(width, PDQ_DRAFT_SIDE), min(height, PDQ_DRAFT_SIDE)
    return width, height


def pdq_input(image: Image.Image | np.ndarray, full_size: tuple[int, int] | None = None) -> np.ndarray:
    """What PDQ hashes: the image's luma as ``(h, w)`` uint8, reduced to exactly 512x512 (box filter) when
    either side exceeds ``PDQ_MAX_SIDE``.

    The luma is made first (PIL's ITU-R 601-2 weights, PDQ's own 0.299/0.587/0.114, rounded to whole grey levels)
    and the one plane reduced: a third of the work of reducing three channels (1024x768: 2.3 -> 1.3 ms). Alpha
    is dropped.

    ``full_size``: the original's (width, height) when ``image`` is a reduced decode of it (``pdq_draft_size``):
    the original's size decides the geometry, and such a decode below 512 on a side is brought to 512x512 by
    bicubic interpolation (anything else by the box filter)."""
    if isinstance(image, np.ndarray):
        image = _array_image(image)
    if image.mode not in ("RGB", "L"):
        image = image.convert("L" if image.mode in ("LA", "1", "I", "I;16", "F") else "RGB")
    if image.mode != "L":
        image = image.convert("L")
    width, height = full_size or image.size
    if (width > PDQ_MAX_SIDE or height > PDQ_MAX_SIDE) and image.size != (PDQ_MAX_SIDE, PDQ_MAX_SIDE):
        drafted_small = (width, height) != image.size and min(image.size) < PDQ_MAX_SIDE
        image = image.resize((PDQ_MAX_SIDE, PDQ_MAX_SIDE), Image.Resampling.BICUBIC if drafted_small else PDQ_RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def pdq_hash(image: Image.Image | np.ndarray, full_size: tuple[int, int] | None = None) -> tuple[str, int]:
    """(PDQ hash as 64 lowercase hex chars, quality 0..100) of an RGB or greyscale image (PIL or uint8 array).

    The hex is python-threatexchange's: the reference's 256 bits, most significant first. ``full_size``: see
    ``pdq_input``."""
    frequencies, quality = pdq_frequencies(_nonempty(pdq_input(image, full_size)))
    return pdq_hex(frequencies), quality


DIHEDRAL = ("original", "rotate90", "rotate180", "rotate270", "flip_x", "flip_y", "flip_plus1", "flip_minus1")


def pdq_dihedral(image: Image.Image | np.ndarray,
                 full_size: tuple[int, int] | None = None) -> tuple[tuple[str, ...], int]:
    """PDQ's 8 dihedral hashes (``DIHEDRAL`` order: the image as it is first, as ``pdq_hash`` gives it) and
    the quality, from one pass (the others' frequencies are the original's, turned and negated)."""
    frequencies, quality = pdq_frequencies(_nonempty(pdq_input(image, full_size)))
    return tuple(pdq_hex(f) for f in dihedral_frequencies(frequencies)), quality


def _nonempty(luma: np.ndarray) -> np.ndarray:
    if luma.shape[0] == 0 or luma.shape[1] == 0:
        raise ValueError("cannot hash an empty image")
    return luma


def _array_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got {array.dtype} {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    return Image.fromarray(np.ascontiguousarray(array))


def is_hash_hex(text: str) -> bool:
    """64 lowercase hex chars (the normalised form of both kinds)."""
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex strings of equal length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths: {len(a)} and {len(b)}")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def hex_to_code(text: str) -> np.ndarray:
    """A 64-hex-char hash as faiss's binary code: 32 uint8, the first hex pair first (bit order kept)."""
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8)


def hexes_to_codes(texts: list[str]) -> np.ndarray:
    """``(n, 32)`` uint8 codes of 64-hex-char hashes (one ``bytes.fromhex`` over all of them)."""
    if not texts:
        return np.zeros((0, CODE_BYTES), dtype=np.uint8)
    if any(len(t) != HASH_HEX_LEN for t in texts):
        raise ValueError("every hash must be 64 hex chars")
    return np.frombuffer(bytes.fromhex("".join(texts)), dtype=np.uint8).reshape(len(texts), CODE_BYTES)


def code_to_hex(code: np.ndarray) -> str:
    return np.asarray(code, dtype=np.uint8).tobytes().hex()


def hex_to_bits(text: str) -> np.ndarray:
    """The 256 bits (0/1 uint8) of a hex hash, most significant first."""
    return np.unpackbits(hex_to_code(text))


def bits_to_hex(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def file_hashes(path: str | os.PathLike) -> ImageHashes:
    """An image file's hashes as the service makes them (first frame, EXIF orientation applied,
    a JPEG draft-decoded as far as ``pdq_draft_size`` allows): what ``moderation banks add --image`` adds."""
    from classifiers.preprocess import upright_first_frame_sized

    data = Path(path).read_bytes()
    return image_hashes(data, *upright_first_frame_sized(data, draft_floor=pdq_draft_size))
