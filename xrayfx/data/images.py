"""Image decoding and preprocessing: file bytes -> uint8 RGB (H, W, 3) -> backbone input size.

One entry point per file, :func:`load_image`, used by the pipeline:

1. read the bytes once, reject what is plainly not an image (empty file, Git LFS
   pointer, HTML page) with a reason that says the fix;
2. decode with Pillow (PNG, JPEG, BMP, TIFF; the format is found from the content,
   so a JPEG named ``.png`` still decodes) or, for DICOM, with pydicom (the
   ``dicom`` extra);
3. map every pixel mode to 8-bit: alpha is composited on black then dropped,
   16-bit grey is scaled by its bit depth (PNG ``sBIT`` or 16) and never clipped,
   grey becomes three equal channels;
4. resize to the backbone input with Pillow's bilinear filter, ``stretch`` (the
   paper) or ``crop`` (shorter side to the target, then a centre crop).

Every data problem raises :class:`~xrayfx.exceptions.ImageDecodeError`, which a
pipeline skips and lists; any other exception is a bug and propagates.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from xrayfx.data.dicom import decode_dicom
from xrayfx.data.files import read_regular_bytes
from xrayfx.data.preprocessing import Preprocessing
from xrayfx.data.pixels import DICOM_MAGIC_OFFSET, MAX_PIXELS, check_pixel_count, scale_16bit
from xrayfx.data.quality import TWELVE_BIT_MAX, check_degenerate, note_low_bit_depth
from xrayfx.exceptions import ImageDecodeError, UsageError

__all__ = [
    "MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "decode_image",
    "decode_image_bytes",
    "draft_size_for",
    "is_image_path",
    "load_image",
    "png_significant_bits",
    "resize_image",
    "scale_16bit",
    "to_rgb_uint8",
]

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: File suffixes treated as images when class folders are scanned.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} | DICOM_SUFFIXES
)
#: Pillow formats xrayfx lets Pillow open, whatever the suffix says. Restricting
#: them keeps Pillow's rarer plugins (EPS runs Ghostscript, for one) out of reach.
PIL_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "GIF", "WEBP")
RESIZE_MODES = ("stretch", "crop")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_LFS_PREFIX = b"version https://git-lfs.github.com/spec/"
_EXIF_ORIENTATION = ExifTags.Base.Orientation
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
_PREMULTIPLIED_MODES = frozenset({"La", "RGBa"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_CONVERT_TO_RGB_MODES = frozenset({"RGBX", "CMYK", "YCbCr", "HSV"})

# Exceptions Pillow raises for broken or malformed data (truncated streams, bad
# chunks, bad headers). Caught only around Pillow's own open/load calls, so a
# bug in xrayfx's code is never mistaken for a bad file.
_PIL_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)

# warnings.catch_warnings() swaps the process-wide filter list; the lock keeps two
# threads of this module from interleaving their save/restore. Image.open reads
# only the header, so holding the lock costs microseconds.
_OPEN_LOCK = threading.Lock()


# --------------------------------------------------------------------------- public API


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether a path names an image xrayfx reads, judged by its suffix.

    Hidden files (name starting with ``.``) are excluded: macOS leaves ``._x.png``
    AppleDouble files beside real images, and they are not images.
    """
    p = Path(path)
    return p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")


def decode_image(
    path: str | os.PathLike[str], draft_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an image file to a C-contiguous uint8 RGB array of shape (H, W, 3).

    ``draft_size=(height, width)`` lets JPEG decoding run at a reduced DCT scale
    (1/2, 1/4 or 1/8) that is never smaller than that size, so a later resize still
    downsamples. Other formats ignore it. The file is read once. A missing or
    unreadable file raises the ``OSError`` of ``open`` (it is not a bad image); a
    FIFO, socket, device or dangling symlink raises ImageDecodeError without being read.
    """
    data = read_regular_bytes(path)
    return decode_image_bytes(data, name=str(path), draft_size=draft_size)


def decode_image_bytes(
    data: bytes, name: str = "<bytes>", draft_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode image bytes to a C-contiguous uint8 RGB array of shape (H, W, 3).

    ``name`` is used in error messages and its suffix helps detect DICOM files
    without the ``DICM`` preamble. See :func:`decode_image` for ``draft_size``.
    """
    return _as_rgb(_decode_planes(data, name, draft_size))


def resize_image(img: np.ndarray, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Resize a uint8 image to ``size=(height, width)``; returns uint8 of that size.

    ``mode="stretch"`` resizes to exactly ``size`` ignoring the aspect ratio, as the
    paper did. ``mode="crop"`` keeps the aspect ratio: the shorter side is scaled to
    the target and the centre is cropped (done in one resampling step through
    Pillow's ``box`` argument, so no rounding of an intermediate size).

    The filter is Pillow's bilinear, which widens its support when shrinking (it
    antialiases); the paper's ``cv2.resize`` default ``INTER_LINEAR`` samples only
    the four nearest pixels, so xrayfx's images are slightly smoother than the
    paper's. ``img`` may be (H, W, 3) or (H, W); the result has the same channels.
    """
    _check_resize_args(img, size, mode)
    height, width = size
    if img.shape[:2] == (height, width):
        return np.ascontiguousarray(img)
    pil = Image.fromarray(np.ascontiguousarray(img))
    box = _centre_box(img.shape[1], img.shape[0], width, height) if mode == "crop" else None
    out = pil.resize((width, height), Image.Resampling.BILINEAR, box=box)
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8))


def draft_size_for(prep: Preprocessing) -> tuple[int, int]:
    """The JPEG draft size that is safe for a preprocessing: its ``input_size``.

    Pillow's draft picks one scale factor ``s`` with ``H/s >= h`` and ``W/s >= w``.
    That keeps ``stretch`` a downsampling, and ``crop`` too: its scale factor
    ``max(h/H', w/W')`` stays <= 1 exactly when both inequalities hold.
    """
    return (int(prep.input_size[0]), int(prep.input_size[1]))


def load_image(path: str | os.PathLike[str], prep: Preprocessing, keep_degenerate: bool = False) -> np.ndarray:
    """Decode one file and resize it to ``prep.input_size``: uint8 (h, w, 3) RGB.

    This is the function the pipeline calls per file. Grey images are resized as
    one channel and only then repeated: the same pixels as resizing three channels,
    for a third of the work. JPEGs are decoded in draft mode at no less than
    ``prep.input_size`` (see :func:`draft_size_for`). Degenerate images (constant,
    tiny, a strip, fully transparent; see :mod:`xrayfx.data.quality`) raise
    ImageDecodeError unless ``keep_degenerate``; ``prep.bit_depth`` overrides the
    significant bits of 16-bit PNGs.
    """
    if prep.resize not in RESIZE_MODES:
        raise UsageError(
            f"Unknown resize mode {prep.resize!r}; expected one of {', '.join(RESIZE_MODES)}. "
            "Resolve the preprocessing with xrayfx.models.registry.resolve_preprocessing."
        )
    size = draft_size_for(prep)
    data = read_regular_bytes(path)
    planes = _decode_planes(data, str(path), size, getattr(prep, "bit_depth", None))
    if not keep_degenerate:
        check_degenerate(planes, data, str(path))
    return _as_rgb(resize_image(planes, size, prep.resize))


def to_rgb_uint8(img: Image.Image, bits: int | None = None) -> np.ndarray:
    """Convert a loaded Pillow image of any usual mode to uint8 RGB (H, W, 3).

    Alpha (LA, PA, RGBA, P with transparency) is composited on black and dropped;
    premultiplied modes (La, RGBa) already are. 16-bit grey (I;16, I;16B, I) is
    scaled by ``bits`` significant bits (default 16) with :func:`scale_16bit`;
    float (F) must lie in [0, 1]. Grey is repeated to three channels.

    Output is RGB. The paper swapped BGR to RGB only because OpenCV loads images
    as BGR; Pillow gives RGB, so no swap is needed here.
    """
    return _as_rgb(_to_planes(img, bits))


def png_significant_bits(data: bytes) -> int | None:
    """The greyscale significant bits from a PNG's ``sBIT`` chunk, or None.

    Walks the chunk list (8-byte signature, then length/type/data/CRC chunks)
    up to the first ``IDAT``, where ``sBIT`` must come before. Returns the first
    byte of ``sBIT`` (the grey or first colour channel's bits) for any colour type.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype == b"sBIT":
            return data[pos + 8] if length >= 1 and pos + 9 <= len(data) else None
        if ctype in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


# --------------------------------------------------------------------------- dispatch


def _decode_planes(
    data: bytes, name: str, draft_size: tuple[int, int] | None, bit_depth: int | None = None
) -> np.ndarray:
    """Decode to uint8 (H, W) for grey or (H, W, 3) for colour; ``bit_depth`` overrides a PNG's sBIT."""
    _check_draft_size(draft_size)
    _reject_non_image(data, name)
    if _is_dicom(data, name):
        return decode_dicom(data, name)
    return _decode_pillow(data, name, draft_size, bit_depth)


def _reject_non_image(data: bytes, name: str) -> None:
    """Raise with a precise reason for the usual non-images found in image folders."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes); re-download or remove it")
    if data.startswith(_LFS_PREFIX):
        raise ImageDecodeError(
            name, "Git LFS pointer file, not an image; run `git lfs pull` to fetch the real file"
        )
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")):
        raise ImageDecodeError(
            name, "HTML/XML text, not an image (a failed download?); re-download it"
        )


def _is_dicom(data: bytes, name: str) -> bool:
    """DICOM by the ``DICM`` magic at offset 128, or by suffix unless the bytes are PNG/JPEG."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return True
    if data.startswith((_PNG_SIGNATURE, _JPEG_SIGNATURE)):
        return False
    return Path(name).suffix.lower() in DICOM_SUFFIXES


def _as_rgb(planes: np.ndarray) -> np.ndarray:
    """Grey (H, W) to three equal channels; always C-contiguous uint8 (H, W, 3)."""
    if planes.ndim == 2:
        planes = np.repeat(planes[:, :, None], 3, axis=2)
    return np.ascontiguousarray(planes, dtype=np.uint8)


def _is_size_pair(value: Any) -> bool:
    """A (height, width) pair of positive integers."""
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
        and all(v > 0 for v in value)
    )


def _check_draft_size(draft_size: tuple[int, int] | None) -> None:
    if draft_size is None:
        return
    if not _is_size_pair(draft_size):
        raise UsageError(
            f"draft_size must be None or (height, width) of positive integers; got {draft_size!r}"
        )


def _check_resize_args(img: Any, size: Any, mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise UsageError(f"Unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        got = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
        raise UsageError(
            f"resize_image expects a uint8 numpy array; got {got}. Decode it with decode_image."
        )
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or 0 in img.shape:
        raise UsageError(
            f"resize_image expects a non-empty (H, W, 3) or (H, W) array; got shape {img.shape}"
        )
    if not _is_size_pair(size):
        raise UsageError(f"size must be (height, width) of positive integers; got {size!r}")


def _centre_box(
    width: int, height: int, target_w: int, target_h: int
) -> tuple[float, float, float, float]:
    """The centred source box with the target's aspect ratio (what a centre crop keeps)."""
    target_aspect = target_w / target_h
    if width / height > target_aspect:
        box_w = height * target_aspect
        x0 = (width - box_w) / 2
        return (x0, 0.0, x0 + box_w, float(height))
    box_h = width / target_aspect
    y0 = (height - box_h) / 2
    return (0.0, y0, float(width), y0 + box_h)


# --------------------------------------------------------------------------- Pillow


def _decode_pillow(
    data: bytes, name: str, draft_size: tuple[int, int] | None, bit_depth: int | None = None
) -> np.ndarray:
    """Open (header only), check the size, draft, load, orient and convert with Pillow."""
    img = _open_pillow(data, name)
    try:
        if draft_size is not None and img.format in ("JPEG", "MPO"):
            _apply_draft(img, draft_size)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # as cv2.imread does by default
    except _PIL_DATA_ERRORS as exc:
        raise ImageDecodeError(name, _pillow_reason(exc)) from exc
    bits = png_significant_bits(data) if data.startswith(_PNG_SIGNATURE) else None
    return _to_planes(img, bit_depth or bits, name)


def _open_pillow(data: bytes, name: str) -> Image.Image:
    """``Image.open`` with decompression-bomb warnings as errors, then xrayfx's own pixel limit.

    Pillow's own limit (``Image.MAX_IMAGE_PIXELS``) is left untouched for other
    code; xrayfx checks :data:`MAX_PIXELS` right after the header is read, before
    draft mode could shrink the image.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_pil_formats())
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(
            name,
            f"decompression bomb refused by Pillow ({exc}); the limit for radiographs is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels, downscale it first if it is genuine",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, _unidentified_reason(data)) from exc
    except _PIL_DATA_ERRORS as exc:
        raise ImageDecodeError(name, _pillow_reason(exc)) from exc
    check_pixel_count(img.width, img.height, name)
    return img


def _pil_formats() -> tuple[str, ...]:
    """:data:`PIL_FORMATS` this Pillow build has (``Image.open`` fails on unknown names)."""
    Image.init()
    return tuple(f for f in PIL_FORMATS if f in Image.OPEN)


def _apply_draft(img: Image.Image, draft_size: tuple[int, int]) -> None:
    """Ask the JPEG decoder for the smallest DCT scale still >= draft_size (height, width)."""
    height, width = draft_size
    if _exif_orientation(img) in _ROTATING_ORIENTATIONS:
        height, width = width, height  # the stored image is rotated 90 degrees from the shown one
    img.draft(img.mode, (width, height))


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_DATA_ERRORS:
        return 1  # an unreadable EXIF block only loses the orientation, not the image
    return value if isinstance(value, int) else 1


def _pillow_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated image data ({text}); re-download or remove it"
    return (
        f"corrupt or unreadable image data ({type(exc).__name__}: {text}); "
        "re-download or remove it"
    )


def _unidentified_reason(data: bytes) -> str:
    head = data[:64]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    kind = "a text file" if printable == len(head) else f"unknown data starting {data[:8]!r}"
    return (
        f"not an image: {kind} (readable formats: {', '.join(PIL_FORMATS)}, DICOM); "
        "remove it from the image folder"
    )


# --------------------------------------------------------------------------- pixel modes


def _to_planes(img: Image.Image, bits: int | None, name: str = "<image>") -> np.ndarray:
    """Any Pillow mode to uint8 (H, W) grey or (H, W, 3) RGB."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if mode == "P":
        if "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA"):
            return _composite_on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in _ALPHA_MODES:
        target = "LA" if mode == "LA" else "RGBA"
        return _composite_on_black(np.asarray(img.convert(target), dtype=np.uint8))
    if mode in _PREMULTIPLIED_MODES:
        arr = np.asarray(img, dtype=np.uint8)  # colour already multiplied by alpha: on black
        return np.ascontiguousarray(arr[:, :, 0] if mode == "La" else arr[:, :, :3])
    if mode in _CONVERT_TO_RGB_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _sixteen_bit_to_uint8(np.asarray(img), bits, name)
    if mode == "F":
        return _float_to_uint8(np.asarray(img, dtype=np.float32), name)
    raise ImageDecodeError(
        name, f"unsupported pixel mode {mode!r}; convert it to an 8-bit RGB or greyscale PNG"
    )


def _composite_on_black(arr: np.ndarray) -> np.ndarray:
    """(H, W, 2) LA or (H, W, 4) RGBA to colour * alpha / 255, rounded, alpha dropped."""
    colour = arr[:, :, :-1].astype(np.uint32)
    alpha = arr[:, :, -1:].astype(np.uint32)
    # (c * a + 127) // 255 is exact rounding: c * a / 255 never ends in .5 (255 is odd).
    out = ((colour * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(out[:, :, 0] if out.shape[2] == 1 else out)


def _sixteen_bit_to_uint8(arr: np.ndarray, bits: int | None, name: str) -> np.ndarray:
    """16-bit grey (or 32-bit ``I`` holding 16-bit values) scaled by its significant bits.

    The PNG standard asks encoders to scale samples up to the full 16 bits and to
    record the original depth in ``sBIT``; many medical converters instead store
    12-bit values as they are and set ``sBIT=12``. Both are handled: ``sBIT`` is
    used when every value fits in it, else the samples were scaled to full depth
    and 16 bits are used. (A spec-conformant image darker than 1/16 of the range
    would be brightened; no radiograph is.)
    """
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
        raise ImageDecodeError(
            name,
            f"32-bit integer pixels outside the 16-bit range (min {arr.min()}, max {arr.max()}); "
            "save it as an 8- or 16-bit greyscale PNG",
        )
    depth = 16
    if bits is not None and 1 <= bits < 16 and (not arr.size or arr.max() <= (1 << bits) - 1):
        depth = bits
    elif bits is None and arr.size and 0 < arr.max() <= TWELVE_BIT_MAX:
        note_low_bit_depth(name, int(arr.max()))  # 12-bit data without sBIT: near-black; warned once per run
    return scale_16bit(arr, depth)


def _float_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(arr)) or (arr.size and (arr.min() < 0.0 or arr.max() > 1.0)):
        raise ImageDecodeError(
            name,
            "floating-point pixels outside [0, 1] (or not finite) have no defined grey scale; "
            "save it as an 8- or 16-bit greyscale PNG",
        )
    return np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
