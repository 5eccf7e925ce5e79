"""Image bytes to the model's input: decode, orient, make RGB, resize (and crop).

Matches the checkpoint's own image processor, whose numbers ``ImageSpec`` holds: CLIP's
(shortest edge to ``resize``, then a centre crop of ``size``), SigLIP's (the whole image
squashed to ``size`` x ``size``) or SigLIP 2 NaFlex's (aspect ratio kept, resized to a grid of
at most ``max_patches`` patches). It returns compact ``uint8`` pixels; normalisation happens on
the model's device. JPEGs are decoded at reduced scale (draft mode) when much larger than needed.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from collections.abc import Callable
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from classifiers.errors import ModerationError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
NEUTRAL_BACKGROUND = (128, 128, 128)
MAX_FRAME_SCAN = 100  # animations: frames looked at, at most, when sampling several


# Leading bytes of the allowed formats; used to refuse a download early, before decoding.
SIGNATURES = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
)
SNIFF_BYTES = 12


def looks_like_image(prefix: bytes) -> bool:
    """True when the first bytes are those of an allowed format (WebP: RIFF....WEBP)."""
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return True
    return prefix.startswith(SIGNATURES)


Mode = Literal["crop", "squash", "patches"]


@dataclass(frozen=True)
class ImageSpec:
    """What the checkpoint's image processor does, as numbers (``classifiers.checkpoint``
    reads them from the processor transformers loads).

    ``crop``: shortest edge to ``resize`` (default ``size``), then a centre crop of ``size``.
    ``squash``: the whole image to ``size`` x ``size``. ``patches``: aspect ratio kept, both
    sides multiples of ``patch_size``, at most ``max_patches`` patches (``size`` unused).
    Pixels are normalised as ``(x * rescale - mean) / std``.
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    mode: Mode = "crop"
    resize: int | None = None
    resample: int = int(Image.Resampling.BICUBIC)
    rescale: float = 1 / 255
    patch_size: int = 16
    max_patches: int = 256

    def __post_init__(self) -> None:
        if self.mode not in ("crop", "squash", "patches"):
            raise ValueError(f"mode must be crop, squash or patches, not {self.mode!r}")
        if self.size < 1 or self.patch_size < 1 or self.max_patches < 1:
            raise ValueError("size, patch_size and max_patches must be positive")
        if self.mode == "crop" and self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) is smaller than the crop ({self.size})")

    @property
    def fixed_shape(self) -> bool:
        """Whether every image comes out the same shape (``size`` x ``size``)."""
        return self.mode != "patches"

    def target(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image is resized to, before any crop."""
        if self.mode == "crop":
            return resize_shape(width, height, self.resize or self.size)
        if self.mode == "squash":
            return self.size, self.size
        rows, cols = patch_grid(height, width, self.patch_size, self.max_patches)
        return cols * self.patch_size, rows * self.patch_size


def patch_grid(height: int, width: int, patch_size: int, max_patches: int) -> tuple[int, int]:
    """(rows, columns) of patches SigLIP 2 NaFlex resizes an image to: transformers' own rule."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        get_image_size_for_max_num_patches,
    )

    h, w = get_image_size_for_max_num_patches(height, width, patch_size, max_patches)
    return h // patch_size, w // patch_size


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
    if image.mode == "RGB":
        return image
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
    """Decode the first frame into an ``(h, w, 3)`` uint8 array (see ``decode_frames``)."""
    return decode_frames(data, spec, max_pixels, draft, max_frames=1)[0]


def decode_frames(
    data: bytes,
    spec: ImageSpec,
    max_pixels: int = 50_000_000,
    draft: bool = True,
    max_frames: int = 1,
    first_frame: Callable[[Image.Image, tuple[int, int]], None] | None = None,
    draft_at_least: int = 0,
    draft_floor: Callable[[int, int], tuple[int, int]] | None = None,
) -> np.ndarray:
    """Decode up to ``max_frames`` evenly spaced frames into ``(k, h, w, 3)`` uint8: ``h = w =
    size``, except in ``patches`` mode, where they follow the image's aspect ratio.

    Still images give one frame. Animations are scanned only as far as a bounded number of
    frames (never thousands). ``first_frame``, if given, is called with the first frame,
    upright and RGB, as decoded (at draft scale) before any resize, and the original's upright
    ``(width, height)`` (the PDQ hash and face detection are made from them);
    ``draft_at_least`` keeps each side of a draft-decoded JPEG at least this large (the face
    detector's ``detect_max_side``); ``draft_floor(width, height)``, if given, is the least
    (width, height) a draft decode may give, per image (PDQ's ``pdq_draft_size``). Raises ``ModerationError`` with ``unsupported_media_type``,
    ``image_too_large`` or ``image_decode_error``: bad input never escapes as another exception.
    """
    image = _open(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            orientation = _orientation(image)
            full_size = _upright(image.size, orientation)
            target = spec.target(*full_size)
            if draft and image.format == "JPEG":
                # DCT-domain downscale (1/2, 1/4, 1/8) to no less than the target size, then
                # bicubic: within ~0.2 grey levels on average of decoding at full size, and
                # 2.6x faster for 1024x768 (6.5 -> 2.5 ms), 1.6x for 4000x3000 (12.9 -> 7.9 ms).
                w, h = _upright(image.size, orientation)
                factor = max(1.0, min(w / target[0], h / target[1]))
                image.draft("RGB", _draft_request(image.size, draft_at_least, draft_floor,
                                                  (int(image.width / factor), int(image.height / factor))))
            # A JPEG decoded larger than its draft scale would give (the face detector wants >= 512
            # a side, PDQ >= 256) is box-reduced by the power of two the draft would have used before the
            # resize: the model then gets what it would get without them, at the draft path's cost
            # (1024x768 to 224: 3.1 -> 1.7 ms).
            reduce_by = _draft_reduction(_upright(image.size, orientation), target) if (
                draft and image.format == "JPEG") else 1
            frames = []
            for n, index in enumerate(_frame_indices(image, max_frames, max_pixels)):
                image.seek(index)
                upright = _upright_rgb(image, orientation)
                if n == 0 and first_frame is not None:
                    first_frame(upright, full_size)
                frames.append(_fit(upright.reduce(reduce_by) if reduce_by > 1 else upright, spec, 1, target))
            return np.stack(frames)
    except ModerationError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ModerationError("image_too_large", "the image has too many pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ModerationError("image_decode_error", f"the image could not be decoded: {exc}") from None


def _draft_request(size: tuple[int, int], at_least: int, floor: Callable[[int, int], tuple[int, int]] | None,
                   wanted: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """The size to ask ``JpegImageFile.draft`` for (stored orientation): ``wanted``, but each side
    no smaller than ``at_least`` (or the side itself) nor than ``floor(width, height)``."""
    floor_w, floor_h = floor(*size) if floor is not None else (0, 0)
    return (max(wanted[0], min(size[0], at_least), floor_w), max(wanted[1], min(size[1], at_least), floor_h))


def _draft_reduction(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The largest of 1, 2, 4, 8 that keeps ``size`` no smaller than ``target`` on both sides (how
    JPEG's DCT-domain scaling picks its scale)."""
    ratio = min(size[0] / target[0], size[1] / target[1])
    return next((k for k in (8, 4, 2) if ratio >= k), 1)


def upright_first_frame(data: bytes, max_pixels: int = 50_000_000, draft_at_least: int = 0) -> Image.Image:
    """The first frame, upright and RGB, as ``decode_frames`` hands it to ``first_frame`` (a
    JPEG decoded at the smallest draft scale that keeps each side ``draft_at_least``)."""
    return upright_first_frame_sized(data, max_pixels, draft_at_least)[0]


def first_frame_at_draft(
    data: bytes, frame: Image.Image, draft_floor: Callable[[int, int], tuple[int, int]],
    max_pixels: int = 50_000_000,
) -> Image.Image:
    """``frame`` (the first frame as ``decode_frames`` decoded it, upright) if it is what a decode
    with only ``draft_floor`` gives, else that decode: a hash made from it then depends on the
    file alone, not on how large the model or the face detector wanted it decoded (``jpeg_draft``,
    faces, a 384-pixel checkpoint). Reads the header again; decodes again only on a mismatch."""
    image = _open(data, max_pixels)
    try:
        orientation = _orientation(image)
        if image.format == "JPEG":
            image.draft("RGB", draft_floor(*image.size))  # sets the scale; nothing decoded yet
        if _upright(image.size, orientation) == frame.size:
            return frame
        return _upright_rgb(image, orientation)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ModerationError("image_decode_error", f"the image could not be decoded: {exc}") from None


def upright_first_frame_sized(
    data: bytes, max_pixels: int = 50_000_000, draft_at_least: int = 0,
    draft_floor: Callable[[int, int], tuple[int, int]] | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """``upright_first_frame`` and the original's upright (width, height); ``draft_floor`` as in
    ``decode_frames``."""
    image = _open(data, max_pixels)
    try:
        orientation = _orientation(image)
        full_size = _upright(image.size, orientation)
        if (draft_at_least or draft_floor is not None) and image.format == "JPEG":
            image.draft("RGB", _draft_request(image.size, draft_at_least, draft_floor))
        return _upright_rgb(image, orientation), full_size
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ModerationError("image_decode_error", f"the image could not be decoded: {exc}") from None


def prepare_array(array: np.ndarray, spec: ImageSpec, max_pixels: int = 50_000_000) -> np.ndarray:
    """An already decoded ``(H, W, 3)`` or ``(H, W)`` uint8 image to ``(1, h, w, 3)``."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ModerationError(
            "invalid_request", f"expected a uint8 (H, W), (H, W, 3) or (H, W, 4) array, got "
            f"{array.dtype} {array.shape}",
        )
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ModerationError("image_too_large", f"the image has more than {max_pixels} pixels")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ModerationError("invalid_request", "the image array is empty")
    image = Image.fromarray(array)
    return _fit(image, spec, 1, spec.target(*image.size))[None]


def _frame_indices(image: Image.Image, max_frames: int, max_pixels: int) -> list[int]:
    """Evenly spaced frame numbers among the first few frames; scanning cost is bounded."""
    if max_frames <= 1 or not getattr(image, "is_animated", False):
        return [0]
    width, height = image.size
    scan_limit = max(1, min(MAX_FRAME_SCAN, 4 * max_pixels // max(1, width * height)))
    count = 1
    try:
        while count < scan_limit:
            image.seek(count)
            count += 1
    except EOFError:
        pass
    picks = np.linspace(0, count - 1, min(max_frames, count)).round().astype(int)
    return sorted(set(picks.tolist()))


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied (5-8 turn the image a quarter)."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _upright_rgb(frame: Image.Image, orientation: int) -> Image.Image:
    if orientation != 1:
        frame = ImageOps.exif_transpose(frame)
    return _to_rgb(frame)


def fit_image(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """An upright RGB image (a face crop, say) to the model's ``(h, w, 3)`` uint8 input."""
    return _fit(image, spec, 1, spec.target(*image.size))


def _fit(frame: Image.Image, spec: ImageSpec, orientation: int, target: tuple[int, int]) -> np.ndarray:
    """One frame, upright and RGB, resized to ``target`` (from the full-size image, so a
    draft-decoded JPEG lands on the same shape) and, in ``crop`` mode, centre-cropped."""
    frame = _upright_rgb(frame, orientation)
    width, height = target
    if spec.mode == "crop":
        # Resize-then-centre-crop as CLIP's processor does, but resample only the source region
        # that ends up in the crop: a 1x20000 image must not become a 224x4480000 intermediate.
        size = spec.size
        sx, sy = frame.width / width, frame.height / height
        left, top = (width - size) // 2, (height - size) // 2
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        frame = frame.resize((size, size), spec.resample, box=box)
    else:
        frame = frame.resize((width, height), spec.resample)
    return np.array(frame, dtype=np.uint8)  # a writable copy torch can wrap


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is no reason to reject the pixels
        return 1
