"""banks.hashes: SHA-256, PDQ (format, reduction, robustness on real photographs), Hamming helpers.

The robustness tables print with ``pytest -s``. Photographs are scikit-image's (``skimage.data``). The
"original" is the photo encoded as JPEG quality 95 and decoded. Every variant is made from that decoded
original and goes through a JPEG encode/decode again (quality 95, except ``jpeg60``), as an upload would:

* ``half``: resized to (w // 2, h // 2), Lanczos.
* ``jpeg60``: the original re-encoded at JPEG quality 60.
* ``crop1``: the central 99% of each side kept (0.5% of the width cut off the left and the right, 0.5% of the
  height off the top and the bottom, rounded to whole pixels).
* ``crop5``: the central 95% of each side kept (2.5% off each edge, likewise).
* ``grey``: converted to greyscale (PIL ``L``).
* ``watermark``: a white box at 50% opacity, 10% of the width wide and 3% of the width tall, with "demo" in
  black at 60% opacity inside it, 2% of the width in from the bottom-right corner.
"""

from __future__ import annotations

import io

import numpy as np
import pdqhash
import pytest
from PIL import Image, ImageDraw, ImageFont

from banks.hashes import (
    PDQ_BITS,
    PDQ_MATCH_THRESHOLD,
    PDQ_MAX_SIDE,
    ImageHashes,
    bits_to_hex,
    file_hashes,
    code_to_hex,
    hamming,
    hex_to_bits,
    hex_to_code,
    hexes_to_codes,
    image_hashes,
    is_hash_hex,
    pdq_draft_size,
    pdq_hash,
    pdq_input,
    sha256_hex,
)

skdata = pytest.importorskip("skimage.data")

# Natural photographs shipped with scikit-image (no download). retina (1411x1411) and hubble_deep_field
# (1000x872) are larger than 512, so they go through the reduction.
PHOTOS = {
    "astronaut": lambda: skdata.astronaut(),
    "coffee": lambda: skdata.coffee(),
    "chelsea": lambda: skdata.chelsea(),
    "rocket": lambda: skdata.rocket(),
    "camera": lambda: skdata.camera(),
    "coins": lambda: skdata.coins(),
    "motorcycle": lambda: skdata.stereo_motorcycle()[0],
    "moon": lambda: skdata.moon(),
    "retina": lambda: skdata.retina(),
    "hubble": lambda: skdata.hubble_deep_field(),
}
ROBUST = ("half", "jpeg60", "crop1", "grey", "watermark")  # each within 31 bits of its original
FRAGILE = ("crop5",)  # PDQ moves more than 31 bits: asserted as a strict expected failure below


def _jpeg(image: Image.Image, quality: int = 95) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    decoded.load()
    return decoded


def _crop(image: Image.Image, keep: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def _watermark(image: Image.Image) -> Image.Image:
    base = image.convert("RGBA")
    w, _ = base.size
    over = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    box_w, box_h = round(0.10 * w), max(8, round(0.03 * w))
    x1, y1 = base.width - round(0.02 * w), base.height - round(0.02 * w)
    draw.rectangle((x1 - box_w, y1 - box_h, x1, y1), fill=(255, 255, 255, 128))
    font = ImageFont.load_default(size=max(6, round(box_h * 0.8)))
    draw.text((x1 - box_w + 1, y1 - box_h), "demo", fill=(0, 0, 0, 153), font=font)
    return Image.alpha_composite(base, over).convert("RGB")


def _variants(original: Image.Image) -> dict[str, Image.Image]:
    w, h = original.size
    return {
        "half": _jpeg(original.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "jpeg60": _jpeg(original, 60),
        "crop1": _jpeg(_crop(original, 0.99)),
        "crop5": _jpeg(_crop(original, 0.95)),
        "grey": _jpeg(original.convert("L")),
        "watermark": _jpeg(_watermark(original)),
    }


@pytest.fixture(scope="module")
def photo_hashes() -> dict[str, dict[str, tuple[str, int]]]:
    """photo -> {"original": (hex, quality), variant: (hex, quality), ...}"""
    out = {}
    for name, load in PHOTOS.items():
        original = _jpeg(Image.fromarray(load()).convert("RGB"))
        out[name] = {"original": pdq_hash(original)} | {k: pdq_hash(v) for k, v in _variants(original).items()}
    return out


def _variant_table(photo_hashes) -> dict[str, dict[str, int]]:
    return {
        name: {k: hamming(h["original"][0], h[k][0]) for k in ROBUST + FRAGILE}
        for name, h in photo_hashes.items()
    }


def test_variants_of_a_photo_stay_within_31_bits(photo_hashes):
    table = _variant_table(photo_hashes)
    columns = ROBUST + FRAGILE
    print("\nPDQ distance, original (JPEG q95) -> variant; quality of the original")
    print("| photo | size | quality | " + " | ".join(columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for name, row in table.items():
        size = "x".join(map(str, Image.fromarray(PHOTOS[name]()).size))
        quality = photo_hashes[name]["original"][1]
        print(f"| {name} | {size} | {quality} | " + " | ".join(str(row[c]) for c in columns) + " |")
    print("| max | | | " + " | ".join(str(max(r[c] for r in table.values())) for c in columns) + " |")
    failures = {(n, c): row[c] for n, row in table.items() for c in ROBUST if row[c] > PDQ_MATCH_THRESHOLD}
    assert not failures


@pytest.mark.xfail(strict=True, reason="PDQ is not robust to a 5% crop: 34-74 bits on these photos (measured)")
def test_a_5_percent_crop_stays_within_31_bits(photo_hashes):
    table = _variant_table(photo_hashes)
    assert all(row["crop5"] <= PDQ_MATCH_THRESHOLD for row in table.values()), {
        n: row["crop5"] for n, row in table.items()
    }


def test_different_photos_are_more_than_31_bits_apart(photo_hashes):
    names = list(photo_hashes)
    print("\nPDQ distance between different photos: min over (original vs original, original vs every variant)")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    closest = PDQ_BITS
    for a in names:
        row = []
        for b in names:
            if a == b:
                row.append("-")
                continue
            d = min(hamming(photo_hashes[a]["original"][0], h) for h, _ in photo_hashes[b].values())
            closest = min(closest, d)
            row.append(str(d))
        print(f"| {a} | " + " | ".join(row) + " |")
    print(f"closest pair of different photos: {closest} bits (of {PDQ_BITS})")
    assert closest > PDQ_MATCH_THRESHOLD


def test_pdq_hash_format_and_reference_bit_order():
    image = Image.fromarray(skdata.astronaut())
    hex_hash, quality = pdq_hash(image)
    assert is_hash_hex(hex_hash) and 0 <= quality <= 100 and isinstance(quality, int)
    # python-threatexchange's conversion (pdq_hasher._pdq_from_numpy_array): the bit vector read as one binary number.
    bits, ref_quality = pdqhash.compute(np.ascontiguousarray(np.stack([pdq_input(image)] * 3, axis=-1)))
    bin_str = "".join(str(int(x)) for x in bits)
    assert hex_hash == ("%0*X" % ((len(bin_str) + 3) // 4, int(bin_str, 2))).lower()
    assert quality == ref_quality
    assert pdq_hash(image) == (hex_hash, quality)  # deterministic


def test_pdq_input_reduces_large_images_to_exactly_512_square():
    assert pdq_input(Image.new("RGB", (4000, 3000), "white")).shape == (PDQ_MAX_SIDE, PDQ_MAX_SIDE)
    assert pdq_input(Image.new("RGB", (600, 100), "white")).shape == (PDQ_MAX_SIDE, PDQ_MAX_SIDE)
    assert pdq_input(Image.new("RGB", (512, 300), "white")).shape == (300, 512)  # not above 512: as is
    assert pdq_input(Image.new("L", (40, 30), 7)).shape == (30, 40)


def test_pdq_input_is_the_luma_reduced_once_and_hashes_as_the_rgb_reduction_did():
    image = Image.fromarray(skdata.astronaut()).resize((1024, 768), Image.Resampling.BICUBIC)
    grey = pdq_input(image)
    assert grey.shape == (PDQ_MAX_SIDE, PDQ_MAX_SIDE) and grey.dtype == np.uint8
    assert (grey == np.asarray(image.convert("L").resize((PDQ_MAX_SIDE, PDQ_MAX_SIDE), Image.Resampling.BOX))).all()
    # Reducing the three channels, then the reference's float luma (what this did before): 0-2 bits apart.
    rgb = np.asarray(image.resize((PDQ_MAX_SIDE, PDQ_MAX_SIDE), Image.Resampling.BOX))
    bits, _ = pdqhash.compute(np.ascontiguousarray(rgb))
    assert hamming(pdq_hash(image)[0], bits_to_hex(bits)) <= 2


def test_array_pil_grey_and_alpha_inputs_agree():
    rgb = skdata.chelsea()
    image = Image.fromarray(rgb)
    assert pdq_hash(rgb) == pdq_hash(image)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=2)
    assert pdq_hash(rgba) == pdq_hash(image)
    assert pdq_hash(Image.fromarray(rgba)) == pdq_hash(image)
    grey = image.convert("L")
    assert pdq_hash(grey) == pdq_hash(np.asarray(grey)) == pdq_hash(grey.convert("RGB"))
    assert pdq_hash(image.convert("P")) is not None


def test_tiny_and_bad_inputs():
    for size in [(1, 1), (2, 7), (5, 5)]:
        hex_hash, quality = pdq_hash(Image.new("RGB", size, (10, 200, 30)))
        assert is_hash_hex(hex_hash) and quality == 0
    with pytest.raises(ValueError):
        pdq_hash(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        pdq_hash(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        pdq_hash(np.zeros((0, 4, 3), np.uint8))


PHOTOS_FOR_DRAFTS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field",
                     "retina", "page", "text", "moon", "horse", "brick", "grass", "gravel", "colorwheel")


def test_draft_decoding_at_pdq_draft_size_keeps_the_hash():
    """A JPEG over 512 decoded as small as 256 a side, brought to 512x512 by its original's size: near
    the full decode's hash. The same decode hashed as it is (by its own size) is not."""
    kept, as_is = [], []
    for name in PHOTOS_FOR_DRAFTS:
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        for size in ((1024, 768), (768, 1024), (4000, 3000)):
            buf = io.BytesIO()
            photo.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
            full = Image.open(io.BytesIO(buf.getvalue()))
            draft = Image.open(io.BytesIO(buf.getvalue()))
            draft.draft("RGB", pdq_draft_size(*draft.size))
            assert min(draft.size) >= 256 and max(draft.size) <= max(size) // 2
            reference = pdq_hash(full)[0]
            kept.append(hamming(reference, pdq_hash(draft, full_size=size)[0]))
            as_is.append(hamming(reference, pdq_hash(draft)[0]))
    assert max(kept) <= 8 and np.mean(kept) <= 2, kept
    assert np.mean(as_is) > 4 * np.mean(kept), (as_is, kept)
    assert pdq_draft_size(300, 4000) == (256, 256)
    assert pdq_draft_size(512, 500) == (512, 500)  # not over 512: hashed as it is, so never reduced


def test_pdq_input_geometry_follows_the_original_size():
    frame = Image.new("RGB", (512, 384), "white")
    assert pdq_input(frame).shape == (384, 512)  # an original of 512x384: as it is
    assert pdq_input(frame, full_size=(1024, 768)).shape == (PDQ_MAX_SIDE, PDQ_MAX_SIDE)
    assert pdq_input(Image.new("L", (300, 200)), full_size=(300, 200)).shape == (200, 300)


@pytest.mark.parametrize("size", [(2048, 1536), (1000, 750), (640, 480), (4000, 600)])
def test_file_hashes_equal_the_services_whatever_the_request_decoded(tmp_path, size):
    """The service's PDQ of a file is the file's: the same with faces on (a >= 512 decode), a
    384-pixel checkpoint, no draft decoding, and as ``moderation banks add --image`` makes it."""
    from classifiers.preprocess import ImageSpec, decode_frames
    from deployments.known_images import PdqOfFirstFrame

    photo = Image.fromarray(skdata.astronaut()).resize(size, Image.Resampling.LANCZOS)
    path = tmp_path / "a.jpg"
    photo.save(path, "JPEG", quality=90)
    data = path.read_bytes()
    seen = set()
    for spec, draft, at_least in ((ImageSpec(), True, 0), (ImageSpec(), True, 512), (ImageSpec(size=384), True, 0),
                                  (ImageSpec(), False, 0)):
        hook = PdqOfFirstFrame(data=data)
        decode_frames(data, spec, draft=draft, first_frame=hook, draft_at_least=at_least, draft_floor=pdq_draft_size)
        seen.add(hook.pdq[0])
    assert seen == {file_hashes(path).pdq}


def test_sha256_and_image_hashes():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert image_hashes(b"abc") == ImageHashes(sha256_hex(b"abc"), None, None)
    image = Image.fromarray(skdata.coffee())
    hashes = image_hashes(b"abc", image)
    assert (hashes.pdq, hashes.pdq_quality) == pdq_hash(image)


def test_hamming_and_code_helpers():
    a = "0" * 64
    b = "f" + "0" * 62 + "1"
    assert hamming(a, a) == 0 and hamming(a, b) == 5 and hamming(b, a) == 5
    assert hamming("f" * 64, a) == 256
    with pytest.raises(ValueError):
        hamming("00", "000")
    h = "0123456789abcdef" * 4
    assert code_to_hex(hex_to_code(h)) == h and hex_to_code(h)[0] == 0x01
    assert bits_to_hex(hex_to_bits(h)) == h and hex_to_bits(h)[:8].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    codes = hexes_to_codes([h, a])
    assert codes.shape == (2, 32) and code_to_hex(codes[0]) == h and code_to_hex(codes[1]) == a
    assert hexes_to_codes([]).shape == (0, 32)
    assert is_hash_hex(h) and not is_hash_hex(h.upper()) and not is_hash_hex(h[:-1]) and not is_hash_hex(None)
