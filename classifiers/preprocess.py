"""Image bytes to the model's input: decode, orient, make RGB, resize and centre-crop.

Matches CLIP's image processor (shortest edge to ``size`` with bicubic resampling, then a
centre crop) and returns compact ``uint8`` pixels; normalisation happens on the model's device.
JPEGs are decoded at reduced scale (draft mode) when they are much larger than needed.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from classifiers.errors import ModerationError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
NEUTRAL_BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class ImageSpec:
    """What the checkpoint's image processor expects (read from ``preprocessor_config.json``)."""

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ModerationError("image_decode_error", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ModerationError("image_too_large", "the image has too many pixels") from None
    except UnidentifiedImageError:
        raise ModerationError("unsupported_media_type", "the data is not a supported image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ModerationError("image_decode_error", f"the image header is corrupt: {exc}") from None
    if image.format not in ALLOWED_FORMATS:
        raise ModerationError(
            "unsupported_media_type", f"image format {image.format} is not supported"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ModerationError(
            "image_too_large",
            f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels",
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.int64)
        scale = 257.0 if image.mode.startswith("I;16") or array.max() > 255 else 1.0
        image = Image.fromarray((array / scale).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, NEUTRAL_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (width, height) with the shortest edge at ``size``, as CLIP's processor rounds it."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def decode_image(
    data: bytes, spec: ImageSpec, max_pixels: int = 50_000_000, draft: bool = True
) -> np.ndarray:
    """Decode one image into a ``(size, size, 3)`` uint8 array, first frame only.

    Raises ``ModerationError`` with ``unsupported_media_type``, ``image_too_large`` or
    ``image_decode_error``: bad input never escapes as another exception.
    """
    image = _open(data, max_pixels)
    size = spec.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if draft and image.format == "JPEG":
                # DCT-domain downscale to no less than twice the target: much cheaper to decode.
                w, h = image.size
                factor = max(1.0, min(w, h) / (2 * size))
                image.draft("RGB", (int(w / factor), int(h / factor)))
            image.seek(0)
            if _orientation(image) != 1:
                image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            width, height = resize_shape(image.width, image.height, size)
            image = image.resize((width, height), Image.Resampling.BICUBIC)
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            return np.array(image, dtype=np.uint8)  # a writable copy torch can wrap
    except ModerationError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ModerationError("image_too_large", "the image has too many pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ModerationError("image_decode_error", f"the image could not be decoded: {exc}") from None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is no reason to reject the pixels
        return 1
