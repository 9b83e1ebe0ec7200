"""Tests of xrayfx.data.images: decoding every pixel mode, bad inputs, DICOM, resizing, real files."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import CXR
from xrayfx.data import images
from xrayfx.exceptions import ImageDecodeError, UsageError
from xrayfx.data.images import (
    MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    decode_image,
    decode_image_bytes,
    is_image_path,
    load_image,
    png_significant_bits,
    resize_image,
    scale_16bit,
    to_rgb_uint8,
)
from xrayfx.models.registry import get_spec, resolve_preprocessing

try:
    import pydicom
except ImportError:  # the optional "dicom" extra
    pydicom = None

needs_pydicom = pytest.mark.skipif(pydicom is None, reason='needs pip install "xrayfx[dicom]"')

RAW = CXR / "raw"
IMAGES = CXR / "images"


# --------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def insert_after_ihdr(png: bytes, chunk: bytes) -> bytes:
    """Insert a chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    end_of_ihdr = 8 + 8 + 13 + 4
    assert png[12:16] == b"IHDR"
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming width x height 8-bit grey, then IEND: no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def expected_16bit(values: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(np.floor(values.astype(np.float64) * 255 / (2**bits - 1) + 0.5), 0, 255)


# --------------------------------------------------------------------------- suffixes


def test_is_image_path_by_suffix_and_hidden_files():
    assert is_image_path("a/b/x.PNG")
    assert is_image_path(Path("x.jpeg")) and is_image_path("x.jpg") and is_image_path("x.dcm")
    assert not is_image_path("x.txt")
    assert not is_image_path("x.csv")
    assert not is_image_path("._x.png")  # macOS AppleDouble file
    assert {".png", ".jpg", ".jpeg", ".dcm", ".dicom"} <= SUPPORTED_SUFFIXES


# --------------------------------------------------------------------------- pixel modes


def test_grey_l_becomes_three_equal_channels():
    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    out = to_rgb_uint8(Image.fromarray(grey, mode="L"))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_rgb_passes_through_in_rgb_order():
    arr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    out = to_rgb_uint8(Image.fromarray(arr, mode="RGB"))
    np.testing.assert_array_equal(out, arr)


def test_rgba_is_composited_on_black():
    arr = np.array([[[255, 0, 0, 128], [10, 20, 30, 255], [200, 200, 200, 0]]], dtype=np.uint8)
    out = to_rgb_uint8(Image.fromarray(arr, mode="RGBA"))
    assert out.shape == (1, 3, 3)
    assert abs(int(out[0, 0, 0]) - 128) <= 1 and out[0, 0, 1] == 0 and out[0, 0, 2] == 0
    np.testing.assert_array_equal(out[0, 1], [10, 20, 30])  # opaque: unchanged
    np.testing.assert_array_equal(out[0, 2], [0, 0, 0])  # transparent: black


def test_la_is_composited_on_black():
    arr = np.array([[[200, 255], [200, 64], [200, 0]]], dtype=np.uint8)
    out = to_rgb_uint8(Image.fromarray(arr, mode="LA"))
    want = np.round(200 * np.array([255, 64, 0]) / 255)
    assert out.shape == (1, 3, 3)
    for c in range(3):
        assert np.all(np.abs(out[0, :, c].astype(int) - want) <= 1)


def test_palette_without_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = to_rgb_uint8(img)
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [12, 34, 56]])


def test_palette_with_transparency_round_trip_png(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([90, 90, 90, 250, 10, 20] + [0] * 762)
    img.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=0)  # index 0 fully transparent
    assert Image.open(path).mode == "P"
    out = decode_image(path)
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [250, 10, 20]])


def test_cmyk_converts_to_rgb():
    img = Image.new("CMYK", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 0))
    img.putpixel((2, 0), (0, 0, 0, 255))
    out = to_rgb_uint8(img)
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 255, 255], [0, 0, 0]])


def test_bilevel_and_premultiplied_modes():
    one = Image.new("1", (2, 1))
    one.putpixel((1, 0), 1)
    np.testing.assert_array_equal(to_rgb_uint8(one)[0], [[0, 0, 0], [255, 255, 255]])
    rgba_pre = Image.new("RGBa", (1, 1), (100, 50, 20, 128))
    np.testing.assert_array_equal(to_rgb_uint8(rgba_pre)[0, 0], [100, 50, 20])


def test_float_mode_in_unit_range_and_out_of_range():
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    out = to_rgb_uint8(img)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    with pytest.raises(ImageDecodeError, match=r"outside \[0, 1\]"):
        to_rgb_uint8(Image.fromarray(np.array([[0.0, 7.0]], dtype=np.float32), mode="F"))


@pytest.mark.parametrize(
    "mode, fmt, colour",
    [
        ("L", "PNG", 77),
        ("LA", "PNG", (77, 255)),
        ("RGB", "PNG", (10, 120, 230)),
        ("RGBA", "PNG", (10, 120, 230, 255)),
        ("L", "JPEG", 77),
        ("RGB", "JPEG", (10, 120, 230)),
        ("CMYK", "JPEG", (0, 0, 0, 0)),
        ("RGB", "BMP", (10, 120, 230)),
        ("RGB", "TIFF", (10, 120, 230)),
    ],
)
def test_files_in_every_mode_decode_to_rgb(tmp_path, mode, fmt, colour):
    img = Image.new(mode, (16, 12), colour)
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, fmt)
    out = decode_image(path)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    # independent reference: Pillow's own RGB conversion of a flat, opaque image
    want = np.array(Image.new(mode, (1, 1), colour).convert("RGB").getpixel((0, 0)))
    tolerance = 3 if fmt == "JPEG" else 0
    assert np.all(np.abs(out.astype(int) - want) <= tolerance)


def test_mislabelled_jpeg_named_png_still_decodes(tmp_path):
    path = tmp_path / "really_a.png"
    path.write_bytes(encode(Image.new("L", (8, 8), 50), "JPEG"))
    out = decode_image(path)
    assert out.shape == (8, 8, 3) and abs(int(out.mean()) - 50) <= 2


def test_exif_orientation_is_applied_like_opencv(tmp_path):
    img = Image.new("L", (40, 20), 0)  # stored 20 high, 40 wide
    img.paste(255, (0, 0, 10, 20))  # left quarter white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    out = decode_image(path)
    assert out.shape[:2] == (40, 20)  # shown as 40 high, 20 wide
    assert out[:10, :, 0].mean() > 200 and out[-10:, :, 0].mean() < 50  # white band now on top


# --------------------------------------------------------------------------- 16-bit


def test_pillow_convert_l_clips_16bit_which_is_why_it_is_not_used():
    values = np.array([[256, 4095, 65535]], dtype=np.uint16)
    clipped = np.asarray(Image.fromarray(values).convert("L"))
    assert clipped.tolist() == [[255, 255, 255]]  # Pillow's behaviour the spec warns about
    ours = to_rgb_uint8(Image.fromarray(values))[:, :, 0]
    assert ours.tolist() == expected_16bit(values, 16).astype(int).tolist()
    assert len(set(ours[0].tolist())) == 3


def test_16bit_ramp_png_keeps_256_levels(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    out = decode_image(path)
    assert out.shape == (256, 256, 3)
    grey = out[:, :, 0]
    assert grey.flat[0] == 0 and grey.flat[-1] == 255
    assert len(np.unique(grey)) == 256
    assert np.all(np.diff(grey.ravel().astype(int)) >= 0)  # monotonic
    np.testing.assert_array_equal(grey, expected_16bit(ramp, 16))


def test_12bit_png_with_sbit_is_scaled_by_12_bits(tmp_path):
    values = np.array([[0, 1, 2048, 4095]], dtype=np.uint16)
    png = encode(Image.fromarray(values), "PNG")
    assert png_significant_bits(png) is None
    with_sbit = insert_after_ihdr(png, png_chunk(b"sBIT", bytes([12])))
    assert png_significant_bits(with_sbit) == 12
    path = tmp_path / "twelve.png"
    path.write_bytes(with_sbit)
    grey = decode_image(path)[0, :, 0]
    np.testing.assert_array_equal(grey, expected_16bit(values[0], 12))
    assert grey[-1] == 255 and grey[2] == 128
    # the same file without sBIT is read as 16-bit: 4095 is dark grey, not white
    no_sbit = decode_image_bytes(png, "plain.png")[0, :, 0]
    np.testing.assert_array_equal(no_sbit, expected_16bit(values[0], 16))
    assert no_sbit[-1] == 16


def test_sbit_png_with_full_depth_samples_uses_16_bits():
    # The PNG standard: samples scaled to 16 bits (left bit replication), sBIT records 12.
    v12 = np.array([[0, 2048, 4095]], dtype=np.uint16)
    v16 = (v12 << 4) | (v12 >> 8)
    png = insert_after_ihdr(encode(Image.fromarray(v16), "PNG"), png_chunk(b"sBIT", bytes([12])))
    grey = decode_image_bytes(png, "conformant.png")[0, :, 0]
    np.testing.assert_array_equal(grey, expected_16bit(v16[0], 16))
    assert grey.tolist()[0] == 0 and grey.tolist()[-1] == 255


def test_big_endian_16bit_mode():
    img = Image.new("I;16B", (3, 1))
    for x, v in enumerate((0, 300, 65535)):
        img.putpixel((x, 0), v)
    out = to_rgb_uint8(img)[0, :, 0]
    np.testing.assert_array_equal(out, expected_16bit(np.array([0, 300, 65535]), 16))


def test_mode_i_with_16bit_values_and_out_of_range():
    img = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(
        to_rgb_uint8(img)[0, :, 0], expected_16bit(np.array([0, 1000, 65535]), 16)
    )
    bad = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I")
    with pytest.raises(ImageDecodeError, match="16-bit range"):
        to_rgb_uint8(bad)


def test_scale_16bit_rounds_then_clips_and_checks_bits():
    got = scale_16bit(np.array([0, 1, 2047, 4095, 5000]), 12)
    np.testing.assert_array_equal(got, [0, 0, 127, 255, 255])
    assert got.dtype == np.uint8
    with pytest.raises(UsageError, match="bits"):
        scale_16bit(np.array([1]), 0)


# --------------------------------------------------------------------------- bad inputs


def _valid_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    return encode(Image.fromarray(arr), fmt)


@pytest.mark.parametrize(
    "data, name, reason",
    [
        (b"", "empty.png", "empty file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 123\n",
         "lfs.png", "git lfs pull"),
        (b"patient notes, not an image\n" * 4, "notes.png", "not an image: a text file"),
        (b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", "page.jpg", "HTML"),
        (b"\x01\x02\x03\x04" * 40, "noise.png", "not an image"),
    ],
)
def test_non_images_raise_with_reason(tmp_path, data, name, reason):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_image(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_files_raise(tmp_path, fmt, suffix):
    data = _valid_bytes(fmt)
    path = tmp_path / f"half.{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(path)


def test_decompression_bomb_above_limit_raises_before_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixel data must not be decoded for a bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    side = int(np.sqrt(MAX_PIXELS)) + 100  # just above xrayfx's limit, below Pillow's own
    assert side * side < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError, match="megapixel"):
        decode_image_bytes(png_header_only(side, side), "bomb.png")


def test_pillow_bomb_warning_becomes_error_and_globals_are_untouched():
    before_limit = Image.MAX_IMAGE_PIXELS
    before_filters = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # even with warnings ignored by the caller
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            decode_image_bytes(png_header_only(10_000, 10_000), "bomb.png")
    assert Image.MAX_IMAGE_PIXELS == before_limit
    assert list(warnings.filters) == before_filters


def test_pixel_limit_holds_even_when_pillow_limit_is_disabled(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageDecodeError, match="megapixel"):
        decode_image_bytes(png_header_only(9000, 9000), "bomb.png")


def test_unsupported_pillow_format_is_refused():
    # ICO is a format Pillow reads but xrayfx does not let it open
    data = encode(Image.new("RGB", (16, 16), (1, 2, 3)), "ICO")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image_bytes(data, "x.png")


def test_unexpected_errors_propagate(monkeypatch):
    data = _valid_bytes("PNG")

    def broken(self):
        raise RuntimeError("a bug, not a bad file")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        decode_image_bytes(data, "ok.png")


def test_unexpected_error_in_conversion_propagates(monkeypatch):
    monkeypatch.setattr(images, "_composite_on_black", lambda arr: 1 / 0)
    data = encode(Image.new("RGBA", (4, 4), (1, 2, 3, 4)), "PNG")
    with pytest.raises(ZeroDivisionError):
        decode_image_bytes(data, "x.png")


def test_missing_file_is_not_a_decode_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "nope.png")


def test_bad_draft_size_is_a_usage_error():
    with pytest.raises(UsageError, match="draft_size"):
        decode_image_bytes(_valid_bytes("JPEG"), "x.jpg", draft_size=(0, 10))


# --------------------------------------------------------------------------- DICOM

def make_dicom(
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    pixel_bytes: bytes | None = None,
    **attrs,
) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # DX
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixel_bytes is not None:
        ds.PixelData = encapsulate([pixel_bytes])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


RAW12 = np.array([[0, 1, 1024], [2048, 3000, 4095]], dtype=np.uint16)


@needs_pydicom
def test_dicom_monochrome2_12bit_scaled_by_bits_stored(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(make_dicom(RAW12))
    out = decode_image(path)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], expected_16bit(RAW12, 12))
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


@needs_pydicom
def test_dicom_detected_by_magic_whatever_the_name():
    out = decode_image_bytes(make_dicom(RAW12), "no_suffix")
    assert out[1, 2, 0] == 255


@needs_pydicom
def test_dicom_without_preamble_detected_by_suffix():
    data = make_dicom(RAW12)[132:]  # drop the 128-byte preamble and "DICM"
    out = decode_image_bytes(data, "bare.dcm")
    np.testing.assert_array_equal(out[:, :, 0], expected_16bit(RAW12, 12))


@needs_pydicom
def test_dicom_monochrome1_is_inverted():
    out = decode_image_bytes(make_dicom(RAW12, photometric="MONOCHROME1"), "m1.dcm")
    np.testing.assert_array_equal(out[:, :, 0], 255 - expected_16bit(RAW12, 12))
    assert out[0, 0, 0] == 255 and out[1, 2, 0] == 0


@needs_pydicom
def test_dicom_rescale_is_applied_negative_slope_flips():
    data = make_dicom(RAW12, RescaleSlope=-1, RescaleIntercept=4095)
    out = decode_image_bytes(data, "rescaled.dcm")[:, :, 0]
    np.testing.assert_array_equal(out, expected_16bit(4095 - RAW12.astype(np.int64), 12))


@needs_pydicom
def test_dicom_rescale_range_is_representable_range_not_image_min_max():
    # slope 2, intercept -1024 over 12 bits: range [-1024, 7166]; a linear map keeps raw/4095
    small = np.array([[100, 200]], dtype=np.uint16)
    out = decode_image_bytes(make_dicom(small, RescaleSlope=2, RescaleIntercept=-1024), "r.dcm")
    np.testing.assert_array_equal(out[0, :, 0], expected_16bit(small[0], 12))


@needs_pydicom
def test_dicom_modality_lut_sequence_is_applied():
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "US"
    table = (np.arange(4096, dtype=np.uint32) ** 2 // 4096).astype(np.uint16)  # non-linear
    lut.LUTData = table.astype("<u2").tobytes()
    data = make_dicom(RAW12, ModalityLUTSequence=[lut])
    out = decode_image_bytes(data, "lut.dcm")[:, :, 0]
    mapped = table[RAW12].astype(np.float64)
    want = np.clip(np.floor(mapped / table.max() * 255 + 0.5), 0, 255)
    np.testing.assert_array_equal(out, want)
    assert out[1, 0] == 64  # 2048 -> 1024 of 4094, not 128 as without the LUT


@needs_pydicom
def test_dicom_signed_pixels_use_signed_range():
    signed = np.array([[-2048, 0, 2047]], dtype=np.int16)
    out = decode_image_bytes(make_dicom(signed, signed=True), "s.dcm")[0, :, 0]
    want = expected_16bit(signed[0].astype(np.int64) + 2048, 12)
    np.testing.assert_array_equal(out, want)
    assert out.tolist() == [0, 128, 255]


@needs_pydicom
def test_dicom_rgb():
    rgb = np.array([[[255, 0, 0], [0, 128, 255]]], dtype=np.uint8)
    out = decode_image_bytes(make_dicom(rgb, bits_stored=8, photometric="RGB"), "rgb.dcm")
    np.testing.assert_array_equal(out, rgb)


@needs_pydicom
def test_dicom_unsupported_transfer_syntax():
    data = make_dicom(RAW12, transfer_syntax="1.2.840.10008.1.2.4.100", pixel_bytes=b"\0" * 64)
    with pytest.raises(ImageDecodeError, match=r"1\.2\.840\.10008\.1\.2\.4\.100.*not supported"):
        decode_image_bytes(data, "mpeg.dcm")


@needs_pydicom
def test_dicom_jpeg2000_with_bad_data_is_a_decode_error():
    data = make_dicom(RAW12, transfer_syntax="1.2.840.10008.1.2.4.90", pixel_bytes=b"\0" * 64)
    with pytest.raises(ImageDecodeError, match="DICOM"):
        decode_image_bytes(data, "j2k.dcm")


@needs_pydicom
def test_dicom_transfer_syntax_without_plugin_names_the_fix():
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed here")
    data = make_dicom(RAW12, transfer_syntax=JPEGLSLossless, pixel_bytes=b"\0" * 64)
    with pytest.raises(ImageDecodeError, match=r"1\.2\.840\.10008\.1\.2\.4\.80.*pylibjpeg"):
        decode_image_bytes(data, "jls.dcm")


@needs_pydicom
def test_dicom_bomb_refused_before_decoding():
    data = make_dicom(RAW12, pixel_bytes=None)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns = 10_000, 10_000  # header lies; pixel data is tiny
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageDecodeError, match="megapixel"):
        decode_image_bytes(buf.getvalue(), "big.dcm")


@needs_pydicom
def test_non_dicom_with_dcm_suffix():
    with pytest.raises(ImageDecodeError, match="DICOM"):
        decode_image_bytes(b"just some text, not dicom\n" * 20, "fake.dcm")


def test_dicom_without_pydicom_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pydicom", None)
    data = b"\0" * 128 + b"DICM" + b"\0" * 64
    with pytest.raises(ImageDecodeError, match=r'pip install "xrayfx\[dicom\]"'):
        decode_image_bytes(data, "x.dcm")


# --------------------------------------------------------------------------- resize


def three_bands(height: int, width: int) -> np.ndarray:
    """Left third red, centre third green, right third blue."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    img[:, :third, 0] = 255
    img[:, third : 2 * third, 1] = 255
    img[:, 2 * third :, 2] = 255
    return img


def test_stretch_gives_exact_size_and_keeps_all_content():
    out = resize_image(three_bands(100, 300), (50, 40), "stretch")
    assert out.shape == (50, 40, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[:, 2, 0].min() > 200 and out[:, -3, 2].min() > 200  # red left, blue right


def test_crop_keeps_aspect_and_centre():
    out = resize_image(three_bands(100, 300), (50, 50), "crop")
    assert out.shape == (50, 50, 3)
    inner = out[:, 2:-2]
    assert inner[:, :, 1].min() == 255 and inner[:, :, 0].max() == 0 and inner[:, :, 2].max() == 0


def test_crop_of_tall_image_keeps_vertical_centre():
    tall = np.transpose(three_bands(100, 300), (1, 0, 2)).copy()  # 300 high, bands top to bottom
    out = resize_image(tall, (20, 40), "crop")
    assert out.shape == (20, 40, 3)
    assert out[2:-2, :, 1].min() == 255 and out[2:-2, :, 0].max() == 0


def test_resize_same_size_is_identity_and_grey_supported():
    img = three_bands(30, 30)
    np.testing.assert_array_equal(resize_image(img, (30, 30)), img)
    grey = np.full((10, 20), 7, dtype=np.uint8)
    assert resize_image(grey, (5, 5), "crop").shape == (5, 5)


@pytest.mark.parametrize(
    "img, size, mode, match",
    [
        (np.zeros((4, 4, 3), np.float32), (2, 2), "stretch", "uint8"),
        (np.zeros((4, 4, 4), np.uint8), (2, 2), "stretch", "shape"),
        (np.zeros((4, 4, 3), np.uint8), (0, 2), "stretch", "size"),
        (np.zeros((4, 4, 3), np.uint8), (2, 2), "pad", "resize mode"),
    ],
)
def test_resize_argument_errors(img, size, mode, match):
    with pytest.raises(UsageError, match=match):
        resize_image(img, size, mode)


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> Path:
    yy, xx = np.mgrid[0:2000, 0:2000]
    arr = ((xx // 50 + yy // 50) % 2 * 200 + 20).astype(np.uint8)
    path = tmp_path_factory.mktemp("draft") / "big.jpg"
    Image.fromarray(arr, mode="L").save(path, quality=90)
    return path


def test_draft_mode_decodes_large_jpeg_at_reduced_size(big_jpeg):
    full = decode_image(big_jpeg)
    assert full.shape == (2000, 2000, 3)
    small = decode_image(big_jpeg, draft_size=(224, 224))
    assert 224 <= min(small.shape[:2]) < 2000
    assert small.shape == (250, 250, 3)  # Pillow's 1/8 DCT scale
    tall = decode_image(big_jpeg, draft_size=(300, 224))
    assert tall.shape[0] >= 300 and tall.shape[1] >= 224 and tall.shape[0] < 2000


def test_draft_size_ignored_for_png():
    data = encode(Image.new("L", (600, 400), 9), "PNG")
    assert decode_image_bytes(data, "x.png", draft_size=(224, 224)).shape == (400, 600, 3)


def test_load_image_on_synthetic_file_both_resize_modes(big_jpeg):
    spec = get_spec("mobilenet")
    for resize in ("stretch", "crop"):
        prep = resolve_preprocessing(spec, resize=resize)
        out = load_image(big_jpeg, prep)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])


# --------------------------------------------------------------------------- real files


def _real_files() -> list[Path]:
    if not RAW.is_dir() or not IMAGES.is_dir():
        return []
    raw = sorted(RAW.iterdir())
    covid = sorted((IMAGES / "covid").glob("*.png"))[:3]
    normal = sorted((IMAGES / "normal").glob("*.jpeg"))[:3]
    return raw + covid + normal


REAL = _real_files()


@pytest.mark.skipif(not REAL, reason=f"{CXR} not found: ../shared is laid beside the repo in CI")
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name[:40])
def test_real_radiographs_load_for_mobilenet(path):
    prep = resolve_preprocessing(get_spec("mobilenet"))
    out = load_image(path, prep)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.std() > 10  # a radiograph, not a flat image
    assert is_image_path(path)


@pytest.mark.skipif(not RAW.is_dir(), reason=f"{RAW} not found")
def test_real_raw_originals_match_independent_reference():
    modes = set()
    for path in sorted(RAW.iterdir()):
        with Image.open(path) as ref:
            modes.add(ref.mode)
            if ref.mode == "RGBA":
                rgba = np.asarray(ref, dtype=np.float64)
                want = np.floor(rgba[:, :, :3] * rgba[:, :, 3:] / 255 + 0.5)
            else:
                want = np.asarray(ref.convert("RGB"), dtype=np.float64)
        got = decode_image(path)
        np.testing.assert_array_equal(got, want, err_msg=path.name)
    assert {"L", "RGB", "RGBA"} <= modes  # the raw set really covers mixed modes
