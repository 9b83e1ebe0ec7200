"""Jittered augmentation: the jitter itself, its cache, background extraction, and fit_head with --augment."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import CXR, absolute_rows, write_manifest
from xrayfx.extraction.augment import (
    JitterParams,
    JitterSource,
    apply_jitter,
    draw_jitter,
    jitter_group_name,
    jitter_image,
    jitter_key,
    jitter_rng,
)
from xrayfx.exceptions import UsageError


@pytest.fixture(scope="module")
def radiograph(mobilenet_config):
    """One real Cohen radiograph, decoded and resized to the input size (224x224 RGB uint8)."""
    from xrayfx.data.images import load_image

    path = next(p for p in sorted((CXR / "images" / "covid").glob("*.png")))
    return load_image(path, mobilenet_config.preprocessing)


# ---------------------------------------------------------------------------------------------
# The jitter


def test_key_is_the_documented_sha256_and_depends_on_every_part():
    import hashlib

    assert jitter_key("abc", 3, 2, 1) == hashlib.sha256(b"abc:3:2:1").hexdigest()
    keys = {jitter_key("abc", 0, 0, 0), jitter_key("abd", 0, 0, 0), jitter_key("abc", 1, 0, 0),
            jitter_key("abc", 0, 1, 0), jitter_key("abc", 0, 0, 1)}
    assert len(keys) == 5


def test_same_key_same_pixels_other_key_other_pixels(radiograph):
    k0, k1 = jitter_key("x", 0, 0, 0), jitter_key("x", 0, 0, 1)
    a, b, c = jitter_image(radiograph, k0), jitter_image(radiograph, k0), jitter_image(radiograph, k1)
    assert a.dtype == np.uint8 and a.shape == radiograph.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # a jitter moves the image but keeps it a radiograph of the same scene
    diff = np.abs(a.astype(int) - radiograph.astype(int)).mean()
    assert 1 < diff < 60


def test_draws_stay_in_the_paper_ranges_and_never_flip_by_default():
    p = JitterParams()
    draws = [draw_jitter(jitter_rng(jitter_key("i", 0, e, 0)), p) for e in range(500)]
    angles = np.array([d["angle"] for d in draws])
    assert np.abs(angles).max() <= 10 and angles.min() < -8 and angles.max() > 8
    for k in ("tx", "ty"):
        assert np.abs([d[k] for d in draws]).max() <= 0.1
    for k in ("zx", "zy", "brightness"):
        v = np.array([d[k] for d in draws])
        assert v.min() >= 0.9 and v.max() <= 1.1
    assert not any(d["flip"] for d in draws)
    flips = [draw_jitter(jitter_rng(jitter_key("i", 0, e, 0)), JitterParams(flip=True))["flip"] for e in range(100)]
    assert 20 < sum(flips) < 80


def test_zero_ranges_give_the_image_back_unchanged(radiograph):
    still = JitterParams(rotation=0, shift=0, zoom=0, brightness=0)
    assert np.array_equal(jitter_image(radiograph, jitter_key("x", 0, 0, 0), still), radiograph)


def test_each_kind_of_jitter_does_what_it_says():
    img = np.zeros((64, 64, 3), np.uint8)
    img[20:30, 40:50] = 200
    base = dict(angle=0.0, ty=0.0, tx=0.0, zy=1.0, zx=1.0, brightness=1.0, flip=False)
    bright = apply_jitter(img, {**base, "brightness": 1.1})
    assert bright.max() == 220
    shifted = apply_jitter(img, {**base, "tx": 0.125})  # input sampled 8 px to the right: content moves left
    assert np.array_equal(shifted[20:30, 32:42], img[20:30, 40:50])
    zoomed_out = apply_jitter(img, {**base, "zy": 1.1, "zx": 1.1})
    assert (zoomed_out >= 150).sum() < (img >= 150).sum()
    rotated = apply_jitter(img, {**base, "angle": 10.0})
    assert not np.array_equal(rotated, img)
    assert abs(int(rotated.astype(int).sum()) - int(img.astype(int).sum())) < 0.1 * img.sum()  # mass kept
    # nearest fill: an edge row is repeated into the uncovered border
    edge = np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    moved = apply_jitter(edge, {**base, "tx": -0.1})
    assert (moved[:, :7] == 0).all()


def test_bad_ranges_and_images_are_refused():
    with pytest.raises(UsageError, match="zoom"):
        JitterParams(zoom=1.5)
    with pytest.raises(UsageError, match="rotation"):
        JitterParams(rotation=-1)
    with pytest.raises(UsageError, match="uint8"):
        apply_jitter(np.zeros((8, 8, 3), np.float32), draw_jitter(jitter_rng(jitter_key("a", 0, 0, 0))))


def test_group_name_depends_on_the_ranges():
    assert jitter_group_name("g", JitterParams()) != jitter_group_name("g", JitterParams(rotation=5))
    assert jitter_group_name("g", JitterParams()).startswith("g-jitter-")


# ---------------------------------------------------------------------------------------------
# The jitter source: extraction in the background, cache, no session on a rerun


@pytest.fixture
def six_images(shared_rows):
    rows = ([r for r in shared_rows if r["source"] == "cohen"][:3]
            + [r for r in shared_rows if r["source"] == "mooney"][:3])
    return absolute_rows(rows)


def _source(six, mobilenet_config, mobilenet_export, cache, **kw):
    from xrayfx.util import sha256_file

    ids = [sha256_file(r["path"]) for r in six]
    return JitterSource(mobilenet_export, mobilenet_config, cache, ids, [r["path"] for r in six],
                        [r["label"] for r in six], **kw)


def test_source_embeds_jitters_in_the_background_and_a_rerun_builds_no_session(
    six_images, mobilenet_config, mobilenet_export, seeded_cache, tmp_path, monkeypatch
):
    from xrayfx.extraction.pipeline import extract

    cache = seeded_cache  # the originals below are extracted with the session's export, not a second one
    with _source(six_images, mobilenet_config, mobilenet_export, cache, n=2, seed=7, epochs=2) as src:
        X0, y0 = src.epoch(0)
        assert 1 in src._futures, "asking for epoch 0 starts epoch 1 in the background"
        X1, _ = src.epoch(1)
    assert X0.shape == (12, 256) and list(y0) == [r["label"] for r in six_images for _ in range(2)]
    assert src.stats.n_new == 24 and src.stats.sessions_built == 1
    assert not np.allclose(X0, X1)
    # jitters are near their original, not equal to it
    originals = extract(data=write_manifest(tmp_path / "six.csv", six_images), config=mobilenet_config,
                        cache_dir=cache, progress=False).embeddings
    d_same = np.linalg.norm(X0[0] - originals[0])
    d_other = np.linalg.norm(X0[0] - originals[3])
    assert 0 < d_same < d_other

    import xrayfx.extraction.augment

    def no_session(*a, **k):
        raise AssertionError("a rerun must not build an inference session")

    monkeypatch.setattr(xrayfx.extraction.augment, "make_extractor", no_session)
    with _source(six_images, mobilenet_config, mobilenet_export, cache, n=2, seed=7, epochs=2) as again:
        assert np.array_equal(again.epoch(0)[0], X0) and np.array_equal(again.epoch(1)[0], X1)
    assert again.stats.n_new == 0 and again.stats.n_cached == 24 and again.stats.sessions_built == 0


def test_source_refuses_a_bad_n(six_images, mobilenet_config, mobilenet_export, tmp_path):
    with pytest.raises(UsageError, match="--augment"):
        _source(six_images, mobilenet_config, mobilenet_export, tmp_path / "c", n=0)


# ---------------------------------------------------------------------------------------------
# fit_head with --augment


@pytest.fixture(scope="module")
def small_manifest(shared_rows, tmp_path_factory):
    rows = ([r for r in shared_rows if r["source"] == "cohen" and r["label"] == "covid"][:40]
            + [r for r in shared_rows if r["source"] == "mooney"][:40])
    return write_manifest(tmp_path_factory.mktemp("aug") / "small.csv", absolute_rows(rows))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("head,params", [("logreg", None), ("paper", {"epochs": 3})])
def test_fit_head_augment_jitters_training_images_only_and_a_rerun_is_free(
    head, params, small_manifest, mobilenet_config, mobilenet_export, session_cache, monkeypatch
):
    from xrayfx.study.fit import fit_head
    from xrayfx.study.parts import read_parts

    kw = dict(data=small_manifest, config=mobilenet_config, cache_dir=session_cache, head=head, head_params=params,
              augment=2, progress=False, log=None)
    first = fit_head(run_id=f"aug-{head}-1", **kw)
    split = read_parts(first.path / "split.csv", seed=0, val_size=0.15).base
    n_train = int((split.split == "train").sum())
    epochs = 3 if head == "paper" else 1
    stats = first.config["augment"]["stats"][0]
    assert stats["n_new"] + stats["n_cached"] == n_train * 2 * epochs
    bal = first.config["balance"]["per_fold"][0]
    assert bal["n_before"] == n_train * 3  # training rows + 2 jitters of each, before the sampler
    assert first.config["augment"]["n"] == 2 and first.config["augment"]["params"]["rotation"] == 10.0
    if head == "paper":
        assert len(bal["n_after_each_epoch"]) == 3 and len(_rows(first.path / "history.csv")) == 3

    import xrayfx.extraction.augment

    def no_session(*a, **k):
        raise AssertionError("a rerun must find every jitter in the cache")

    monkeypatch.setattr(xrayfx.extraction.augment, "make_extractor", no_session)
    second = fit_head(run_id=f"aug-{head}-2", **kw)
    stats2 = second.config["augment"]["stats"][0]
    assert stats2["n_new"] == 0 and stats2["sessions_built"] == 0
    assert stats2["n_cached"] == n_train * 2 * epochs
    # Deterministic heads (logreg; the paper's head with its default fast trainer, whose shuffles and
    # dropout masks come from the seed): the same run again gives the same predictions.
    if head in ("logreg", "paper"):
        assert _rows(first.path / "predictions.csv") == _rows(second.path / "predictions.csv")
