"""Generated test images (no binary files in the repo)."""

from __future__ import annotations

from PIL import Image

from bench.photos import encode, jpeg, photo_like  # noqa: F401 - re-exported for the tests


def png(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    return encode(photo_like(width, height, seed), "PNG")


def noise_png(side: int, seed: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    import io

    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    import struct
    import zlib

    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)
