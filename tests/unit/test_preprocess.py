import io
import time

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from classifiers.errors import ModerationError
from classifiers.preprocess import ImageSpec, _draft_reduction, decode_frames, decode_image
from images import encode, jpeg, photo_like, png, png_bomb

SPEC = ImageSpec(size=224)


def normalised(pixels: np.ndarray) -> np.ndarray:
    x = pixels.astype(np.float32) / 255.0
    return ((x - np.array(SPEC.mean, np.float32)) / np.array(SPEC.std, np.float32)).transpose(2, 0, 1)


def reference(image: Image.Image) -> np.ndarray:
    processor = CLIPImageProcessorPil()  # CLIP's defaults: 224, bicubic, centre crop
    return processor(images=image, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (224, 224), (1000, 230)])
def test_png_matches_clip_processor(size):
    image = photo_like(*size)
    ours = normalised(decode_image(encode(image, "PNG"), SPEC))
    diff = np.abs(ours - reference(image))
    grey_level = 1 / 255 / min(SPEC.std)
    assert diff.max() <= 2 * grey_level + 1e-6  # resampling only the cropped region: +-2 at most
    assert diff.mean() < 1e-3


def test_extreme_aspect_ratio_is_cheap():
    thin = encode(Image.new("RGB", (1, 200_000), (10, 200, 30)), "PNG")  # under 1 KB
    start = time.perf_counter()
    pixels = decode_image(thin, SPEC)
    assert time.perf_counter() - start < 1.0
    assert pixels.shape == (224, 224, 3) and tuple(pixels[100, 100]) == (10, 200, 30)


@pytest.mark.parametrize("size", [(4000, 3000), (1024, 768), (640, 480)])
def test_jpeg_draft_decode_stays_close_to_the_processor(size):
    data = jpeg(*size, quality=92)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    ours = normalised(decode_image(data, SPEC, draft=True))
    ref = reference(full)
    assert np.abs(ours - ref).mean() < 0.03  # normalised units (~0.8 of one grey level)
    assert np.abs(ours - ref).max() < 0.6


@pytest.mark.parametrize("size", [(4000, 3000), (1024, 768), (640, 480)])
def test_a_jpeg_decoded_large_for_pdq_gives_the_model_what_the_draft_path_gives(size):
    """PDQ and the face detector keep the decode >= 512 a side; the frame is then box-reduced by the
    power of two the draft would have used, so the model's pixels barely depend on them."""
    data = jpeg(*size, quality=92)
    seen = []
    large = decode_frames(data, SPEC, draft=True, first_frame=lambda frame, full: seen.append(frame.size),
                          draft_at_least=512)[0]
    assert min(seen[0]) >= min(512, *size)  # the hook got the large decode
    draft_only = decode_image(data, SPEC, draft=True)
    ref = reference(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(normalised(large) - normalised(draft_only)).mean() < 0.03
    assert np.abs(normalised(large) - ref).mean() < 0.03


def test_draft_reduction_is_the_dct_scale_that_keeps_the_target():
    assert _draft_reduction((1024, 768), (298, 224)) == 2
    assert _draft_reduction((512, 384), (298, 224)) == 1
    assert _draft_reduction((4000, 3000), (298, 224)) == 8
    assert _draft_reduction((1000, 750), (298, 224)) == 2
    assert _draft_reduction((200, 100), (448, 224)) == 1


def test_jpeg_draft_decodes_at_reduced_scale_but_not_below_the_target(monkeypatch):
    from PIL.JpegImagePlugin import JpegImageFile

    decoded_sizes = []
    draft = JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    for size, expected in (((4000, 3000), (500, 375)), ((1024, 768), (512, 384)), ((300, 240), (300, 240))):
        decoded_sizes.clear()
        decode_image(jpeg(*size), SPEC, draft=True)
        assert decoded_sizes == [expected]


def test_output_is_compact_uint8():
    pixels = decode_image(png(), SPEC)
    assert pixels.dtype == np.uint8 and pixels.shape == (224, 224, 3)


def test_exif_orientation_is_applied():
    image = photo_like(320, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 270 to display
    rotated_file = encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    upright_file = encode(image, "JPEG", quality=95)
    a = decode_image(rotated_file, SPEC).astype(float)
    b = decode_image(upright_file, SPEC).astype(float)
    assert np.abs(a - b).mean() < 3


def test_transparency_is_composited_on_neutral_grey():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    pixels = decode_image(encode(rgba, "PNG"), SPEC)
    assert np.all(np.abs(pixels.astype(int) - 128) <= 1)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "I;16", "LA"])
def test_other_modes_decode_to_rgb(mode):
    base = photo_like(96, 64)
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(
        np.asarray(base.convert("L"), np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    pixels = decode_image(encode(image, fmt), SPEC)
    assert pixels.shape == (224, 224, 3)
    grey = np.asarray(base.convert("L").resize((336, 224)).crop((56, 0, 280, 224)), float)
    if mode in ("L", "I;16", "LA"):
        assert np.abs(pixels[..., 0] - grey).mean() < 4  # 16-bit is scaled, not clipped white


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "image_decode_error"),
        (b"<html><body>not an image</body></html>", "unsupported_media_type"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported_media_type"),
        (jpeg()[:400], "image_decode_error"),
        (png()[:300], "image_decode_error"),
    ],
    ids=["empty", "html", "svg", "truncated-jpeg", "truncated-png"],
)
def test_bad_input_raises_a_coded_error(data, code):
    with pytest.raises(ModerationError) as info:
        decode_image(data, SPEC)
    assert info.value.code == code


@pytest.mark.parametrize("side", [9000, 20000])  # 81 MP (our limit), 400 MP (Pillow's too)
def test_pixel_bomb_is_refused_from_the_header_quickly(side):
    bomb = png_bomb(side, side)  # claimed by a 70-byte file
    start = time.perf_counter()
    with pytest.raises(ModerationError) as info:
        decode_image(bomb, SPEC, max_pixels=50_000_000)
    assert info.value.code == "image_too_large" and info.value.status == 413
    assert time.perf_counter() - start < 1.0


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(buf.getvalue(), SPEC)
    assert pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 30
