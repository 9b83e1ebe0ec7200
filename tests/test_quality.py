"""Degenerate images are skipped with a reason (or kept on request); 12-bit data in 16-bit PNGs is detected."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import CXR, MOBILENET_WEIGHTS, run_cli_inprocess, seed_cache
from xrayfx.exceptions import ImageDecodeError, ImageQualityWarning, UsageError
from xrayfx.data.images import load_image


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _degenerate_files(folder):
    """One file per kind of degenerate image, plus a 12-bit PNG stored as 16-bit without sBIT."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((256, 256), 128, np.uint8)).save(folder / "constant.png")
    Image.fromarray(_texture(20, 300)).save(folder / "tiny.png")
    Image.fromarray(_texture(40, 400)).save(folder / "strip.png")
    rgba = np.dstack([_texture(64, 64, s) for s in range(3)] + [np.zeros((64, 64), np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "transparent.png")
    twelve = np.random.default_rng(1).integers(0, 4096, (128, 128)).astype(np.uint16)
    Image.fromarray(twelve).save(folder / "twelve_bit.png")  # mode I;16, no sBIT chunk


@pytest.mark.parametrize("name, words", [
    ("constant.png", "constant, every pixel is 128"),
    ("tiny.png", "under 32 px on a side"),
    ("strip.png", "aspect ratio 10.0:1 beyond 8:1"),
    ("transparent.png", "fully transparent"),
])
def test_degenerate_images_are_refused_with_a_reason_unless_kept(tmp_path, mobilenet_config, name, words):
    _degenerate_files(tmp_path)
    prep = mobilenet_config.preprocessing
    with pytest.raises(ImageDecodeError, match="--keep-degenerate") as info:
        load_image(tmp_path / name, prep)
    assert words in info.value.reason
    kept = load_image(tmp_path / name, prep, keep_degenerate=True)
    assert kept.shape == (224, 224, 3) and kept.dtype == np.uint8


def test_ordinary_images_and_real_radiographs_pass(tmp_path, mobilenet_config, shared_rows):
    Image.fromarray(_texture(64, 500)).save(tmp_path / "wide.png")  # 7.8:1, just inside the limit
    assert load_image(tmp_path / "wide.png", mobilenet_config.preprocessing).shape == (224, 224, 3)
    for r in shared_rows[:: len(shared_rows) // 12][:12]:
        load_image(CXR / r["path"], mobilenet_config.preprocessing)


def test_twelve_bit_data_without_sbit_is_noted_and_bit_depth_scales_it(tmp_path, mobilenet_config):
    from dataclasses import replace

    from xrayfx.data.quality import low_bit_depth_warning, take_low_bit_depth

    _degenerate_files(tmp_path)
    take_low_bit_depth()
    dark = load_image(tmp_path / "twelve_bit.png", mobilenet_config.preprocessing)
    assert dark.max() <= 16  # near-black: 4095 of 65535
    noted = take_low_bit_depth()
    assert list(noted) == [str(tmp_path / "twelve_bit.png")]
    message = low_bit_depth_warning(noted)
    assert "1 16-bit image(s)" in message and "twelve_bit.png" in message and "--bit-depth 12" in message
    bright = load_image(tmp_path / "twelve_bit.png", replace(mobilenet_config.preprocessing, bit_depth=12))
    assert bright.max() > 200 and take_low_bit_depth() == {}


def test_bit_depth_is_recorded_and_fingerprinted_only_when_set(mobilenet_config):
    from xrayfx.models.config import ModelConfig, model_config

    twelve = model_config("mobilenet", str(MOBILENET_WEIGHTS), bit_depth=12)
    assert "bit_depth" not in mobilenet_config.to_dict()["preprocessing"]  # existing cache keys unchanged
    assert twelve.to_dict()["preprocessing"]["bit_depth"] == 12
    assert twelve.fingerprint != mobilenet_config.fingerprint
    assert ModelConfig.from_dict(twelve.to_dict()).preprocessing.bit_depth == 12
    for bad in (4, 17):
        with pytest.raises(UsageError, match="--bit-depth must be an integer from 8 to 16"):
            model_config("mobilenet", str(MOBILENET_WEIGHTS), bit_depth=bad)


def test_extract_skips_degenerate_images_lists_them_and_warns_once_about_twelve_bit(
    tmp_path, shared_rows, mobilenet_config, mobilenet_export, capsys
):
    from xrayfx.extraction.pipeline import extract

    cache = seed_cache(tmp_path / "cache", mobilenet_export)
    normal = tmp_path / "data" / "normal"
    _degenerate_files(normal)
    shutil.copy(CXR / [r for r in shared_rows if r["source"] == "nih"][0]["path"], normal / "real.png")
    with pytest.warns(ImageQualityWarning, match="twelve_bit.png"):
        res = extract(data=tmp_path / "data", config=mobilenet_config, cache_dir=cache, progress=False)
    reasons = {s.path.rsplit("/", 1)[1]: s.reason for s in res.skipped}
    assert set(reasons) == {"constant.png", "tiny.png", "strip.png", "transparent.png"}
    assert len(res.ids) == 2 and any("12" in w for w in res.warnings)
    assert "degenerate image" in res.skipped_file.read_text()

    code, out, err = run_cli_inprocess(
        ["extract", "--model", "mobilenet", "--weights", str(MOBILENET_WEIGHTS), "--data", str(tmp_path / "data"),
         "--cache-dir", str(cache), "--keep-degenerate"], capsys)
    assert code == 0 and "6 embedded (4 new, 2 from cache)" in out
