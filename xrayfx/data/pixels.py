"""Pixel helpers shared by the image decoders (:mod:`xrayfx.data.images`, :mod:`xrayfx.data.dicom`).

The pixel-count limit that refuses decompression bombs, the DICOM magic offset and the
16-bit → 8-bit scaling; no decoder of its own, so both decoders import it without a cycle.
"""

from __future__ import annotations

import numpy as np

from xrayfx.exceptions import ImageDecodeError, UsageError

#: Largest image accepted, in pixels. A radiograph is at most about 4300 x 4300
#: (18 MP); 60 MP leaves room for stitched or scanned films while refusing
#: decompression bombs before any pixel is decoded.
MAX_PIXELS: int = 60_000_000

#: DICOM files carry ``DICM`` at this byte offset, after the 128-byte preamble.
DICOM_MAGIC_OFFSET = 128


def check_pixel_count(width: int, height: int, name: str) -> None:
    """Raise :class:`ImageDecodeError` when an image has more than :data:`MAX_PIXELS` pixels."""
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            name,
            f"image of {width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit for radiographs (a decompression bomb?); "
            "downscale it first if it is genuine",
        )


def scale_16bit(arr: np.ndarray, bits: int) -> np.ndarray:
    """Scale integer samples with ``bits`` significant bits to uint8, never clipping valid ones.

    ``out = round(v * 255 / (2**bits - 1))``; values above ``2**bits - 1`` (a
    malformed file) come out as 255 because the clip happens after scaling.
    Pillow's ``convert("L")`` must not be used instead: it clips 256, 4095 and
    65535 all to 255.
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 32:
        raise UsageError(f"bits must be an integer in [1, 32]; got {bits!r}")
    top = float((1 << int(bits)) - 1)
    scaled = np.rint(np.asarray(arr, dtype=np.float64) * (255.0 / top))
    return np.clip(scaled, 0, 255).astype(np.uint8)
