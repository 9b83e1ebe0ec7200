"""Image quality checks: degenerate images, and 12-bit data stored in 16-bit PNGs without sBIT.

Degenerate images decode fine but carry no radiograph: a constant image, one under
:data:`MIN_SIDE` pixels on a side, a strip beyond :data:`MAX_ASPECT`:1, a fully
transparent one. They are skipped with a reason unless ``--keep-degenerate``.

A 16-bit PNG whose values never exceed 4095 and that has no ``sBIT`` chunk is most
likely 12-bit data stored as is: scaled as 16-bit it comes out near-black (at most
16/255). Decoding notes such files here (decoding runs in worker threads); the
extraction warns once per run with :func:`low_bit_depth_warning`, and
``--bit-depth 12`` scales them by 12 bits.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from PIL import Image

from xrayfx.exceptions import ImageDecodeError

#: Smallest side, in pixels, of an image that is embedded by default.
MIN_SIDE = 32
#: Largest ratio of the longer to the shorter side embedded by default.
MAX_ASPECT = 8.0
#: Largest value of 12-bit data; 16-bit images that stay at or under it are flagged.
TWELVE_BIT_MAX = 4095
_KEEP = "pass --keep-degenerate to embed it anyway"

_low_depth: dict[str, int] = {}
_low_depth_lock = threading.Lock()


def check_degenerate(planes: np.ndarray, data: bytes, name: str) -> None:
    """Raise ImageDecodeError (a skip, with the reason) for a degenerate image; ``planes`` is uint8 (H, W[, 3])."""
    reason = degenerate_reason(planes, data)
    if reason is not None:
        raise ImageDecodeError(name, reason)


def degenerate_reason(planes: np.ndarray, data: bytes = b"") -> str | None:
    """Why a decoded image is degenerate, or None. ``data`` (the file bytes) refines a blank image's reason."""
    height, width = planes.shape[:2]
    if min(height, width) < MIN_SIDE:
        return (f"degenerate image: {width}x{height} pixels, under {MIN_SIDE} px on a side (an icon or a "
                f"thumbnail, not a radiograph); {_KEEP}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT:
        return (f"degenerate image: {width}x{height} pixels, aspect ratio {ratio:.1f}:1 beyond "
                f"{MAX_ASPECT:g}:1 (a strip or a banner, not a radiograph); {_KEEP}")
    lo, hi = int(planes.min()), int(planes.max())
    if lo == hi:
        if hi == 0 and data and fully_transparent(data):
            return f"degenerate image: fully transparent (alpha 0 everywhere), nothing to see; {_KEEP}"
        return f"degenerate image: constant, every pixel is {lo} (blank); {_KEEP}"
    return None


def fully_transparent(data: bytes) -> bool:
    """Whether image bytes carry an alpha channel that is 0 everywhere (Pillow formats only)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("RGBA", "LA", "PA", "La", "RGBa") and "transparency" not in img.info:
                return False
            return int(np.asarray(img.convert("RGBA"))[:, :, 3].max()) == 0
    except (OSError, ValueError, SyntaxError):
        return False


def note_low_bit_depth(name: str, max_value: int) -> None:
    """Record a 16-bit image without sBIT whose values stay within 12 bits (thread-safe)."""
    with _low_depth_lock:
        _low_depth[name] = int(max_value)


def take_low_bit_depth() -> dict[str, int]:
    """The images noted since the last call (name → max value), and forget them."""
    with _low_depth_lock:
        found = dict(_low_depth)
        _low_depth.clear()
    return found


def low_bit_depth_warning(found: dict[str, int], limit: int = 3) -> str | None:
    """One warning for every 16-bit image of a run that looks like 12-bit data, or None."""
    if not found:
        return None
    names = sorted(found)
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return (
        f"{len(names)} 16-bit image(s) without an sBIT chunk never exceed {TWELVE_BIT_MAX} (largest value "
        f"{max(found.values())}): {shown}. That is 12-bit data stored as is, and scaled as 16-bit it comes out "
        "near-black. If it is 12-bit, rerun with --bit-depth 12 (a new cache key: these embeddings are kept apart)"
    )
