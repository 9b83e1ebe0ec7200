"""DICOM decoding (the ``dicom`` extra): pydicom, modality LUT, the BitsStored range, MONOCHROME1.

Split from :mod:`xrayfx.data.images`, which dispatches DICOM files here (the pixel helpers
both use are in :mod:`xrayfx.data.pixels`); every data problem raises
:class:`~xrayfx.exceptions.ImageDecodeError`.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

from xrayfx.exceptions import ImageDecodeError
from xrayfx.data.pixels import DICOM_MAGIC_OFFSET, check_pixel_count, scale_16bit


def decode_dicom(data: bytes, name: str) -> np.ndarray:
    """DICOM to uint8: modality LUT, scale by the BitsStored range, MONOCHROME1 inverted.

    No VOI windowing (WindowCenter/WindowWidth or a VOI LUT) is applied: the full
    representable range is kept, so every file of one modality maps the same way.
    """
    pydicom = _import_pydicom(name)
    ds = _read_dicom(pydicom, data, name)
    _check_dicom_decodable(pydicom, ds, name)
    arr = _dicom_pixels(ds, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = _dicom_grey_to_uint8(pydicom, ds, arr, name)
        return 255 - grey if photometric == "MONOCHROME1" else grey
    if photometric == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(arr, ds)
        return rgb.astype(np.uint8) if rgb.dtype == np.uint8 else scale_16bit(rgb, 16)
    if arr.ndim == 3 and arr.shape[2] == 3:  # RGB, or YBR_* converted to RGB by pydicom
        return arr.astype(np.uint8) if _bits_stored(ds) <= 8 else scale_16bit(arr, _bits_stored(ds))
    raise ImageDecodeError(
        name,
        f"unsupported DICOM PhotometricInterpretation {photometric!r} "
        f"with pixel shape {arr.shape}; convert it to MONOCHROME2 or RGB",
    )


def _import_pydicom(name: str) -> Any:
    try:
        import pydicom
        import pydicom.pixels
    except ImportError as exc:
        raise ImageDecodeError(
            name, 'reading DICOM needs pydicom; install it with pip install "xrayfx[dicom]"'
        ) from exc
    return pydicom


def _read_dicom(pydicom: Any, data: bytes, name: str) -> Any:
    """Parse the dataset; files without the 128-byte preamble are read with ``force``."""
    has_magic = data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        has_pixels = "PixelData" in ds
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, struct.error,
            KeyError, TypeError) as exc:
        raise ImageDecodeError(
            name, f"not a readable DICOM file ({type(exc).__name__}: {exc}); re-export or remove it"
        ) from exc
    if not has_pixels or rows <= 0 or cols <= 0:
        raise ImageDecodeError(
            name,
            "no image in this DICOM file (no Pixel Data, Rows or Columns): a report, or not "
            "DICOM at all despite its suffix; remove it",
        )
    check_pixel_count(cols, rows, name)
    return ds


def _check_dicom_decodable(pydicom: Any, ds: Any, name: str) -> None:
    """Refuse transfer syntaxes pydicom cannot decode here, naming the plugin to install."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return  # raw dataset read with force: pydicom assumes implicit VR little endian
    label = f"{uid} ({uid.name})"
    try:
        decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError as exc:
        raise ImageDecodeError(
            name, f"DICOM transfer syntax {label} is not supported by pydicom; "
            "convert it to an uncompressed transfer syntax (e.g. with dcmdjpeg or gdcmconv --raw)"
        ) from exc
    if not decoder.is_available:
        options = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise ImageDecodeError(
            name, f"DICOM transfer syntax {label} needs a decoding plugin that is not installed; "
            f"install one of: {options} (e.g. pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg, or python-gdcm)"
        )


def _dicom_pixels(ds: Any, name: str) -> np.ndarray:
    """The decoded pixel array of a single-frame DICOM (YBR converted to RGB by pydicom)."""
    try:
        arr = ds.pixel_array
    # pydicom signals undecodable pixel data with RuntimeError (every plugin failed),
    # ValueError (length or attribute mismatch) and NotImplementedError; all are data errors.
    except (RuntimeError, ValueError, NotImplementedError, EOFError, OSError, struct.error) as exc:
        raise ImageDecodeError(
            name, f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc}); "
            "re-export the file"
        ) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageDecodeError(
            name,
            f"multi-frame DICOM ({frames} frames), not a radiograph; export the frame you want",
        )
    return arr


def _bits_stored(ds: Any) -> int:
    return int(ds.get("BitsStored", None) or ds.get("BitsAllocated", 16))


def _dicom_grey_to_uint8(pydicom: Any, ds: Any, arr: np.ndarray, name: str) -> np.ndarray:
    """Modality LUT, then scale from the representable range to [0, 255].

    The range is what the modality LUT makes of every stored value BitsStored
    allows (unsigned 0..2**b-1, signed -2**(b-1)..2**(b-1)-1): a fixed, per-file
    mapping, not a per-image contrast stretch.
    """
    values = pydicom.pixels.apply_modality_lut(arr, ds)
    lo, hi = _dicom_output_range(pydicom, ds)
    if not hi > lo:
        raise ImageDecodeError(
            name, f"DICOM modality LUT maps every stored value to {lo}; the image is blank"
        )
    scaled = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _dicom_output_range(pydicom: Any, ds: Any) -> tuple[float, float]:
    bits = _bits_stored(ds)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    raw_lo, raw_hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if bits <= 16:  # every stored value: exact for rescale and for any LUT
        stored = np.arange(raw_lo, raw_hi + 1, dtype=np.int32 if signed else np.uint32)
    else:  # a linear rescale is monotonic, so its ends suffice
        stored = np.array([raw_lo, raw_hi], dtype=np.int64)
    mapped = np.asarray(pydicom.pixels.apply_modality_lut(stored, ds), dtype=np.float64)
    return float(mapped.min()), float(mapped.max())
